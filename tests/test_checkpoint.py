"""Checkpoints: atomic saves that survive kill -9, safe loads that refuse pickles, exact round trips."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from classicnets import checkpoint as ckpt
from classicnets.errors import CheckpointError

SRC = Path(__file__).resolve().parents[1] / "src"


def _metadata(**overrides):
    values = dict(model="alexnet_28", model_options={"width_mult": 0.25}, num_classes=10, in_channels=1,
                  classes=[f"c{i}" for i in range(10)], image_size=28, mean=None, std=None,
                  dataset="fashion-mnist")
    values.update(overrides)
    return ckpt.model_metadata(**values)


def _save(run_dir: Path, value: float, is_best: bool = False) -> Path:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"epoch": int(value), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
             "betas": (0.9, 0.999), "best": float("-inf"), "history": [{"epoch": 1, "test_acc": 0.5}]}
    return ckpt.save_checkpoint(run_dir, model_state=model.state_dict(), metadata=_metadata(),
                                trainer_state=state, is_best=is_best)


def test_round_trip_keeps_weights_metadata_and_trainer_state(tmp_path):
    _save(tmp_path, 3.0, is_best=True)
    state, metadata = ckpt.load_model_weights(tmp_path)
    assert torch.equal(state["weight"], torch.full((2, 3), 3.0) - 0.1 * 1.0)  # one SGD step, grad = 1
    decoded = ckpt.parse_metadata(metadata)
    assert decoded["model"] == "alexnet_28" and decoded["model_options"] == {"width_mult": 0.25}
    assert decoded["classes"][9] == "c9" and decoded["image_size"] == 28 and decoded["mean"] is None
    assert decoded["num_classes"] == 10 and "classicnets_version" in decoded

    trainer = ckpt.load_trainer_state(tmp_path / "last")
    assert trainer["epoch"] == 3 and trainer["betas"] == (0.9, 0.999) and trainer["best"] == float("-inf")
    assert torch.equal(trainer["rng"], torch.get_rng_state())
    momentum = trainer["optimizer"]["state"][0]["momentum_buffer"]
    assert momentum.shape == (2, 3) and torch.all(momentum == 1.0)
    assert trainer["optimizer"]["param_groups"][0]["params"] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == sorted(
        [ckpt.MODEL_FILE, ckpt.TRAINER_TENSORS_FILE, ckpt.TRAINER_STATE_FILE])


def test_run_dir_prefers_best_and_file_and_dir_paths_work(tmp_path):
    _save(tmp_path, 1.0, is_best=True)
    _save(tmp_path, 2.0)  # last moves on, best stays at epoch 1
    best, _ = ckpt.load_model_weights(tmp_path)
    last, _ = ckpt.load_model_weights(tmp_path / "last" / ckpt.MODEL_FILE)
    assert best["weight"][0, 0].item() == pytest.approx(0.9)
    assert last["weight"][0, 0].item() == pytest.approx(1.9)
    assert ckpt.load_trainer_state(tmp_path)["epoch"] == 2  # resume reads last/
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


@pytest.mark.parametrize("kind", ["torch_save", "raw_pickle", "pickle_renamed"])
def test_pickles_are_refused_and_never_executed(tmp_path, kind):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    if kind == "torch_save":
        path = tmp_path / "model.pt"
        torch.save({"weight": Exploit()}, path)
    else:
        path = tmp_path / ("model.pkl" if kind == "raw_pickle" else "model.safetensors")
        path.write_bytes(pickle.dumps({"weight": Exploit()}))
    with pytest.raises(CheckpointError, match="pickle"):
        ckpt.load_model_weights(path)
    # a checkpoint dir whose model file is a pickle in disguise
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ckpt.MODEL_FILE).write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="pickle"):
        ckpt.load_model_weights(tmp_path / "ckpt")
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_give_clear_errors(tmp_path):
    _save(tmp_path, 1.0)
    data = (tmp_path / "last" / ckpt.MODEL_FILE).read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_model_weights(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_model_weights(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ckpt.load_model_weights(tmp_path / "empty")
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    save_file({"w": torch.zeros(1)}, str(weights_only / ckpt.MODEL_FILE))
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        ckpt.load_trainer_state(weights_only)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _save(tmp_path, 1.0)
    _, metadata = ckpt.load_model_weights(tmp_path)
    ckpt.check_same_model(metadata, model="alexnet_28", model_options={"width_mult": 0.25},
                          num_classes=10, in_channels=1, source=tmp_path)
    with pytest.raises(CheckpointError, match="model is 'alexnet_28', expected 'alexnet_d2l'"):
        ckpt.check_same_model(metadata, model="alexnet_d2l", model_options={"width_mult": 0.25},
                              num_classes=10, in_channels=1, source=tmp_path)
    with pytest.raises(CheckpointError, match="model_options"):
        ckpt.check_same_model(metadata, model="alexnet_28", model_options={"width_mult": 0.5},
                              num_classes=10, in_channels=1, source=tmp_path)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        state, _ = ckpt.load_model_weights(tmp_path)
        ckpt.load_into_model(torch.nn.Linear(4, 2), state, tmp_path)


def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    """A process killed with SIGKILL between the files of a save must not damage last/."""
    run_dir = tmp_path / "run"
    _save(run_dir, 1.0, is_best=True)
    script = textwrap.dedent(f"""
        import sys, time, torch
        from pathlib import Path
        from classicnets import checkpoint as ckpt

        def pause(path):
            print("WROTE", path.name, flush=True)
            time.sleep(60)

        ckpt._after_file_written = pause
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, 7.0)
        ckpt.save_checkpoint({str(run_dir)!r}, model_state=model.state_dict(), metadata={{"model": "x"}},
                             trainer_state={{"epoch": 7}}, is_best=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    try:
        line = process.stdout.readline()
        assert line.startswith("WROTE model.safetensors"), line
        time.sleep(0.2)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -9
    assert list(run_dir.glob(".last.tmp-*")), "the kill should have left a half-written temporary"
    state, metadata = ckpt.load_model_weights(run_dir / "last")
    assert state["weight"][0, 0].item() == pytest.approx(0.9) and metadata["model"] == "alexnet_28"
    assert ckpt.load_trainer_state(run_dir)["epoch"] == 1
    _save(run_dir, 2.0)  # the next save cleans up the leftovers
    assert not list(run_dir.glob(".last.*")) and ckpt.load_trainer_state(run_dir)["epoch"] == 2


def test_kill_between_renames_is_recovered(tmp_path):
    """The one instant where last/ is absent: the moved-aside copy is found and restored."""
    _save(tmp_path, 1.0)
    aside = tmp_path / ".last.old-abc123"
    (tmp_path / "last").rename(aside)
    state, _ = ckpt.load_model_weights(tmp_path)
    assert state["weight"][0, 0].item() == pytest.approx(0.9)
    _save(tmp_path, 2.0)
    assert not aside.exists() and ckpt.load_trainer_state(tmp_path)["epoch"] == 2


def test_metadata_is_plain_strings(tmp_path):
    metadata = _metadata(mean=(0.5,), std=[0.25])
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert json.loads(metadata["mean"]) == [0.5] and json.loads(metadata["std"]) == [0.25]


# ------------------------------------------------------------------------------------ background saves


def _live_state():
    model = torch.nn.Conv2d(2, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2, 5, 5)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_background_save_writes_what_a_direct_save_writes(tmp_path):
    model, optimizer = _live_state()
    state = {"epoch": 1, "optimizer": optimizer.state_dict()}
    ckpt.save_checkpoint(tmp_path / "direct", model_state=model.state_dict(), metadata=_metadata(),
                         trainer_state=state, is_best=True)
    saver = ckpt.BackgroundSaver()
    last = saver.save(tmp_path / "background", model_state=model.state_dict(), metadata=_metadata(),
                      trainer_state=state, is_best=True)
    saver.wait()
    assert last == tmp_path / "background" / "last"
    for name in ("last", "best"):
        direct, background = tmp_path / "direct" / name, tmp_path / "background" / name
        assert sorted(p.name for p in background.iterdir()) == sorted(p.name for p in direct.iterdir())
        # safetensors writes its metadata in hash order, so compare contents rather than bytes
        for file in (ckpt.MODEL_FILE, ckpt.TRAINER_TENSORS_FILE):
            with safe_open(direct / file, "pt") as a, safe_open(background / file, "pt") as b:
                assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
                assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
        trainer_json = ckpt.TRAINER_STATE_FILE
        assert (background / trainer_json).read_text() == (direct / trainer_json).read_text()


def test_background_save_keeps_the_state_of_the_moment_it_was_asked(tmp_path):
    """Training goes on changing the weights and the momentum in place while the files are written."""
    model, optimizer = _live_state()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    saver = ckpt.BackgroundSaver()
    saver.save(tmp_path, model_state=model.state_dict(), metadata=_metadata(),
               trainer_state={"optimizer": optimizer.state_dict()})
    with torch.no_grad():
        for tensor in [*model.parameters(), optimizer.state[model.weight]["momentum_buffer"]]:
            tensor.mul_(0).add_(7)
    saver.wait()
    weights, _ = ckpt.load_model_weights(tmp_path)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    saved = ckpt.load_trainer_state(tmp_path / "last")["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(saved, momentum)


def test_a_failed_background_save_is_raised_by_the_next_wait(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the run directory should be")
    model, _ = _live_state()
    saver = ckpt.BackgroundSaver()
    saver.save(blocker, model_state=model.state_dict(), metadata=_metadata(), trainer_state={"epoch": 1})
    with pytest.raises(CheckpointError, match="writing the checkpoint .*not-a-directory/last failed"):
        saver.wait()
    saver.wait()  # reported once


# ------------------------------------------------------------------------------------ non-finite values


def _save_model(run_dir: Path, weight: torch.Tensor, **metadata) -> Path:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(weight)
    ckpt.save_checkpoint(run_dir, model_state=model.state_dict(), metadata=_metadata(**metadata),
                         trainer_state={"epoch": 1})
    return run_dir / ckpt.LAST


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_weights_are_refused_at_load(tmp_path, bad):
    """A checkpoint with NaN weights evaluated at 10% top-1 and predicted "nan%", exit 0."""
    weight = torch.ones(2, 3)
    weight[1, 2] = bad
    last = _save_model(tmp_path, weight)
    with pytest.raises(ckpt.NonFiniteCheckpointError, match=r"weight 'weight' holds 1 NaN or infinite value"
                                                            r"\(s\) of 6.*earlier one"):
        ckpt.load_model_weights(last)


@pytest.mark.parametrize("field, values", [("std", [0.0]), ("std", [float("nan")]), ("std", [-0.2]),
                                           ("mean", [float("inf")])])
def test_a_zero_or_nan_std_or_mean_in_the_header_is_refused_at_load(tmp_path, field, values):
    stats = {"mean": [0.5], "std": [0.25], field: values}
    last = _save_model(tmp_path, torch.ones(2, 3), **stats)
    with pytest.raises(ckpt.NonFiniteCheckpointError, match=f"header field '{field}' is .*must be finite"):
        ckpt.load_model_weights(last)
    assert issubclass(ckpt.NonFiniteCheckpointError, CheckpointError)


def test_nan_optimizer_state_is_refused_at_resume(tmp_path):
    state = {"optimizer": {"state": {0: {"momentum_buffer": torch.tensor([1.0, float("nan")])}}}}
    ckpt.save_checkpoint(tmp_path, model_state={"w": torch.ones(1)}, metadata=_metadata(),
                         trainer_state=state)
    with pytest.raises(ckpt.NonFiniteCheckpointError, match="optimizer or scheduler tensor"):
        ckpt.load_trainer_state(tmp_path)
