"""The trainer: settings, schedules, exact resume, interruption, NaN guard, refusals, CLI, learning."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import classicnets
from classicnets import checkpoint as ckpt
from classicnets.errors import CheckpointError, ConfigError, DatasetError
from classicnets.training import loop, rundir, speed
from classicnets.training.config import (
    FIELD_NAMES,
    RECIPES,
    TrainConfig,
    add_config_arguments,
    load_config_file,
    overrides_from_args,
    resolve_config,
)
from classicnets.training.distributed import init_distributed

SRC = Path(__file__).resolve().parents[1] / "src"

# The smallest real run: a 1/16-width 28x28 AlexNet on 512 generated 28x28 images (make_synthetic: the same
# bytes on any machine, no download), deterministic fp32. What these runs test is mechanics, not the data.
TINY = dict(dataset="synthetic", model="alexnet_28", model_options={"width_mult": 0.0625}, subset=512,
            batch_size=64, eval_batch_size=1000, optimizer="sgd", lr=0.05, momentum=0.9, epochs=2,
            deterministic=True, device="cpu", progress=False, normalize=True, augment="flip", log_every=2)


def tiny(tmp_path: Path, **changes) -> dict:
    return {**TINY, "out": str(tmp_path / "run"), **changes}


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return ckpt.load_model_weights(run_dir / which)[0]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


# ------------------------------------------------------------------------------------------- settings


def test_recipes_resolve_and_later_sources_win(tmp_path):
    d2l = resolve_config("d2l")
    assert (d2l.model, d2l.lr, d2l.batch_size, d2l.epochs, d2l.momentum, d2l.init, d2l.normalize) == (
        "alexnet_d2l", 0.01, 128, 10, 0.0, "xavier", False)
    paper = resolve_config("paper")
    assert (paper.momentum, paper.weight_decay, paper.schedule, paper.plateau_max_drops, paper.tta) == (
        0.9, 5e-4, "plateau", 3, "ten-crop")
    assert resolve_config("fast").precision == "bf16" and resolve_config("quick").model == "alexnet_28"

    config_file = tmp_path / "run.yaml"
    config_file.write_text("recipe: d2l\nlr: 0.02\nepochs: 3\nmodel-options: {width_mult: 0.5}\n")
    file_values = load_config_file(config_file)
    config = resolve_config(None, file_values, {"epochs": 5})
    assert (config.recipe, config.lr, config.epochs) == ("d2l", 0.02, 5)
    assert config.model_options == {"width_mult": 0.5}

    toml = tmp_path / "run.toml"
    toml.write_text('optimizer = "adamw"\nbetas = [0.8, 0.99]\nsubset = 1000\n')
    config = resolve_config("quick", load_config_file(toml))
    assert (config.optimizer, config.betas, config.subset) == ("adamw", (0.8, 0.99), 1000)
    # another model than the recipe's drops the recipe's model options (they were for its model)
    assert resolve_config("quick", overrides={"model": "alexnet_d2l"}).model_options == {}


def test_from_recipe_applies_the_recipe_and_overrides():
    config = classicnets.TrainConfig.from_recipe("d2l", epochs=20, precision="bf16")
    assert (config.model, config.lr, config.init, config.normalize) == ("alexnet_d2l", 0.01, "xavier", False)
    assert (config.epochs, config.precision, config.recipe) == (20, "bf16", "d2l")
    with pytest.raises(ConfigError, match="unknown recipe"):
        classicnets.TrainConfig.from_recipe("d2k")


def test_bad_settings_name_the_problem(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rat'"):
        load_config_file(bad_key)
    bad_key.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="did you mean epochs"):
        load_config_file(bad_key)
    bad_type = tmp_path / "type.toml"
    bad_type.write_text('epochs = "many"\n')
    with pytest.raises(ConfigError, match="epochs='many' should be a whole number"):
        load_config_file(bad_type)
    with pytest.raises(ConfigError, match="did you mean adam, adamw"):
        TrainConfig(optimizer="adamm")
    with pytest.raises(ConfigError, match="unknown recipe 'quik'.*did you mean quick"):
        resolve_config("quik")
    with pytest.raises(ConfigError, match="nesterov needs"):
        TrainConfig(nesterov=True)
    with pytest.raises(ConfigError, match="not divisible"):
        TrainConfig(batch_size=100, grad_accum_steps=3)


def test_every_field_is_a_flag_with_help():
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {action.dest: action for action in parser._actions if action.dest in FIELD_NAMES}
    assert set(flags) == set(FIELD_NAMES)
    assert all(action.help and "default:" in action.help for action in flags.values())
    args = parser.parse_args(["--lr", "0.1", "--no-normalize", "--model-options", "width_mult=0.25,dropout=0",
                              "--grad-clip", "none", "--recipe", "quick"])
    assert overrides_from_args(args) == {"lr": 0.1, "normalize": False, "grad_clip": None, "recipe": "quick",
                                         "model_options": {"width_mult": 0.25, "dropout": 0}}
    assert set(RECIPES) == {"default", "d2l", "paper", "fast", "quick", "finetune"}


# ------------------------------------------------------------------------------------------ schedules


def _lrs(config: TrainConfig, steps_per_epoch: int = 10, metric=None) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = loop.Schedule(optimizer, config, steps_per_epoch)
    lrs = []
    for epoch in range(config.epochs):
        for _ in range(steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(metric(epoch) if metric else 0.5)
    return lrs


def test_schedules():
    cosine = _lrs(TrainConfig(lr=0.1, epochs=4, schedule="cosine", warmup_epochs=1, min_lr=0.001))
    assert cosine[0] == pytest.approx(0.001) and max(cosine) == pytest.approx(0.1)
    assert cosine[10] == pytest.approx(0.1) and cosine[-1] == pytest.approx(0.001, abs=1e-3)
    assert all(a <= b for a, b in zip(cosine[:10], cosine[1:11], strict=True))  # warm-up rises

    onecycle = _lrs(TrainConfig(lr=0.1, epochs=4, schedule="onecycle", onecycle_pct=0.25))
    assert max(onecycle) == pytest.approx(0.1) and onecycle.index(max(onecycle)) == 9
    assert onecycle[0] < 0.01 and onecycle[-1] < 1e-4

    step = _lrs(TrainConfig(lr=0.1, epochs=5, schedule="step", step_epochs=2, gamma=0.1))
    assert step[0] == pytest.approx(0.1) and step[25] == pytest.approx(0.01)
    assert step[45] == pytest.approx(1e-3)

    # accuracy never improves: the lr drops after each patience window, but only three times
    plateau = _lrs(TrainConfig(lr=0.01, epochs=20, schedule="plateau", plateau_patience=1), 1, lambda e: 0.5)
    assert sorted(set(plateau), reverse=True) == pytest.approx([0.01, 1e-3, 1e-4, 1e-5])


SCHEDULE_SETTINGS = {
    "constant": {}, "step": dict(step_epochs=1), "plateau": dict(plateau_patience=1), "cosine": {},
    "onecycle": {}, "warmup-constant": dict(warmup_epochs=1), "warmup-cosine": dict(warmup_epochs=0.5),
}


@pytest.mark.parametrize("total", [1, 2, 3, 4])
@pytest.mark.parametrize("name", sorted(SCHEDULE_SETTINGS))
def test_every_schedule_works_for_any_number_of_steps(name, total):
    """Runs of 1 to 4 optimizer steps, in one epoch or one step an epoch: a positive, finite lr at every
    step. (torch's OneCycleLR divides by zero when onecycle_pct x steps is 1: 4 steps at 0.25.)"""
    schedule = name.removeprefix("warmup-")
    for steps_per_epoch, epochs in ((total, 1), (1, total)):
        config = TrainConfig(lr=0.1, epochs=epochs, schedule=schedule, **SCHEDULE_SETTINGS[name])
        lrs = _lrs(config, steps_per_epoch)
        assert len(lrs) == total and all(0 < lr <= 0.1 and math.isfinite(lr) for lr in lrs), lrs
        if name in ("constant", "onecycle"):
            assert max(lrs) == pytest.approx(0.1)  # one-cycle reaches its peak even in one step


def test_onecycle_gives_torchs_onecycle_lrs_bit_for_bit():
    for total, pct in ((40, 0.25), (7, 0.3), (5, 0.25)):
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([parameter], lr=0.1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total,
                                                        pct_start=pct, cycle_momentum=False)
        expected = []
        for _ in range(total):
            expected.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert _lrs(TrainConfig(lr=0.1, epochs=1, schedule="onecycle", onecycle_pct=pct), total) == expected


# ---------------------------------------------------------------------- real runs on Fashion-MNIST


def test_resume_is_exact_and_logs_match(tmp_path):
    """2 epochs straight == 1 epoch, then --resume to 2: bitwise equal weights, same history."""
    straight = classicnets.train(tiny(tmp_path / "a"))
    first = classicnets.train(tiny(tmp_path / "b", epochs=1))
    resumed = classicnets.train(tiny(tmp_path / "b", resume=True))
    assert len(first) == 1 and len(resumed) == 2
    assert_same_weights(weights(tmp_path / "a" / "run"), weights(tmp_path / "b" / "run"))
    for key in ("train_loss", "train_acc", "test_acc", "test_top5"):
        assert [r[key] for r in straight] == [r[key] for r in resumed]
    run = tmp_path / "b" / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (run / "metrics.csv").read_text().count("\n") == 3
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["model_options"] == {"width_mult": 0.0625}
    metadata = ckpt.parse_metadata(ckpt.load_model_weights(run)[1])
    assert (metadata["model"], metadata["num_classes"], metadata["in_channels"], metadata["image_size"]) == (
        "alexnet_28", 10, 1, 28)
    assert metadata["classes"][0] == "pattern-0" and len(metadata["mean"]) == 1
    best_epoch = max(resumed, key=lambda r: r["test_acc"])["epoch"]
    assert ckpt.load_trainer_state(run / "best")["epoch"] == best_epoch


def interrupt_once_after_steps(steps: int, monkeypatch) -> list[int]:
    """Ctrl-C (SIGINT) right after the ``steps``-th training step, once; returns the batch sizes trained."""
    original = loop.Trainer._train_step
    batches: list[int] = []
    interrupted = []

    def step_then_signal(self, x, *args):
        original(self, x, *args)
        batches.append(len(x))
        if len(batches) == steps and not interrupted:
            interrupted.append(True)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(loop.Trainer, "_train_step", step_then_signal)
    return batches


@pytest.mark.parametrize("changes", [{}, dict(optimizer="adamw", lr=3e-3, weight_decay=0.05, precision="bf16",
                                             channels_last=True, schedule="onecycle")],
                         ids=["sgd", "quick-recipe-optimizer"])
def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch, changes):
    """SIGINT during step 3 of epoch 1: the step finishes, last/ is saved mid-epoch, --resume continues it
    to the same weights as a run never interrupted."""
    settings = tiny(tmp_path, epochs=1, **changes)
    classicnets.train({**settings, "out": str(tmp_path / "straight")})

    interrupt_once_after_steps(3, monkeypatch)
    with pytest.raises(loop.TrainingInterrupted) as stopped:
        classicnets.train(settings)
    assert stopped.value.exit_code == 130 and "--resume" in str(stopped.value)
    state = ckpt.load_trainer_state(tmp_path / "run")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    history = classicnets.train({**settings, "resume": True})
    assert len(history) == 1
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "run"))


def test_the_last_optimizer_step_of_an_epoch_averages_over_its_own_micro_batches():
    # 15 micro-batches in steps of 2: seven full steps, then one of a single micro-batch
    assert [loop.micro_batches_in_step(step, 15, 2) for step in range(15)] == [2] * 14 + [1]
    assert [loop.micro_batches_in_step(step, 8, 3) for step in range(8)] == [3] * 6 + [2] * 2
    assert {loop.micro_batches_in_step(step, 7, 1) for step in range(7)} == {1}


def test_mid_epoch_resume_with_other_accumulation_continues_from_the_same_optimizer_step(
        tmp_path, monkeypatch):
    """Stopped after 3 of 8 steps of 64; resumed as micro-batches of 32 (2 accumulation steps): the run
    trains the remaining 5 optimizer steps' 320 images, as 10 micro-batches, and no image twice."""
    settings = tiny(tmp_path, epochs=1, augment="none")
    classicnets.train({**settings, "out": str(tmp_path / "straight")})

    batches = interrupt_once_after_steps(3, monkeypatch)
    with pytest.raises(loop.TrainingInterrupted):
        classicnets.train(settings)
    batches.clear()
    history = classicnets.train({**settings, "resume": True, "grad_accum_steps": 2})
    assert batches == [32] * 10
    straight = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[0])
    # over the same 512 images; micro-batches of 32 draw other dropout masks than batches of 64
    assert history[-1]["train_loss"] == pytest.approx(straight["train_loss"], rel=5e-3)


def test_checkpoint_of_another_model_or_a_pickle_is_refused(tmp_path):
    settings = tiny(tmp_path, epochs=1, subset=128)
    classicnets.train(settings)
    with pytest.raises(ConfigError, match="already holds a run"):
        classicnets.train(settings)
    with pytest.raises(CheckpointError, match="saved for another model.*model_options"):
        classicnets.train({**settings, "epochs": 2, "resume": True, "model_options": {"width_mult": 0.125}})
    with pytest.raises(ConfigError, match="other settings.*lr: saved 0.05, now 0.1"):
        classicnets.train({**settings, "epochs": 2, "resume": True, "lr": 0.1})

    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "run" / "last" / ckpt.MODEL_FILE).write_bytes(pickle.dumps({"w": Exploit()}))
    with pytest.raises(CheckpointError, match="pickle"):
        classicnets.train({**settings, "epochs": 2, "resume": True})
    assert not marker.exists()


class _ToyLoader:
    """A seeded in-memory loader with the DeviceLoader interface (set_epoch, len)."""

    def __init__(self, x, y, batch_size, poison_epoch=None):
        self.x, self.y, self.batch_size, self.poison_epoch, self.epoch = x, y, batch_size, poison_epoch, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch))
        for batch in order.split(self.batch_size)[: len(self)]:
            x = self.x[batch]
            yield (x * float("nan") if self.epoch == self.poison_epoch else x), self.y[batch]


def _toy_trainer(tmp_path, train_loader, *, conv: bool = False, **changes):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    if conv:  # 4-d weights, whose memory layout channels_last changes
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    config = TrainConfig(**{"lr": 0.1, "epochs": 2, "batch_size": 32, "out": str(tmp_path / "toy"),
                            "progress": False, "device": "cpu", "log_every": 4, "precision": "fp32",
                            **changes})
    metadata = ckpt.model_metadata(model="toy", model_options={}, num_classes=4, in_channels=1,
                                   classes=list("abcd"), image_size=4, mean=None, std=None, dataset="toy")
    test_loader = _ToyLoader(train_loader.x[:64], train_loader.y[:64], 64)
    return loop.Trainer(model, train_loader, test_loader, speed.resolve_speed(config, torch.device("cpu")),
                        ctx=init_distributed("cpu"), metadata=metadata)


def _toy_data(n=256):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 4, 4, generator=generator)
    return x, x.flatten(1)[:, :4].argmax(1)


def _tiny_image_folder(root: Path, per_class: int, classes=("cat", "dog")) -> Path:
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8)
                pixels[..., c % 3] = 250
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root


FOLDER_RUN = dict(model="alexnet_28", model_options={"width_mult": 0.0625}, image_size=28, epochs=1,
                  batch_size=16, momentum=0.9, device="cpu", progress=False, num_workers=0, precision="fp32")


def test_a_folder_smaller_than_a_batch_trains_on_all_of_it(tmp_path):
    """6 training images, batch 16: one step of 6 images an epoch, said in a warning (it trained nothing,
    reported loss 0.0000 and left an untrained best/)."""
    folder = _tiny_image_folder(tmp_path / "images", per_class=3)
    with pytest.warns(UserWarning, match="only 6 training image.*fewer than the batch of 16"):
        history = classicnets.train(FOLDER_RUN, dataset=str(folder), out=str(tmp_path / "run"))
    assert history[0]["train_loss"] > 0 and history[0]["images_per_sec"] > 0
    assert ckpt.load_trainer_state(tmp_path / "run")["optimizer"]["state"]  # a step was taken


def test_a_test_split_of_unreadable_images_is_an_error_not_zero_accuracy(tmp_path):
    folder = _tiny_image_folder(tmp_path / "images", per_class=8)
    for path in (folder / "val").rglob("*.png"):
        path.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="no test image could be evaluated"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-epoch notes on the skipped files
        classicnets.train(FOLDER_RUN, dataset=str(folder), out=str(tmp_path / "run"))


def test_a_loader_without_batches_is_refused(tmp_path):
    x, y = _toy_data(16)
    with pytest.raises(ConfigError, match="yields no batch"):
        _toy_trainer(tmp_path, _ToyLoader(x, y, 32))


def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved(tmp_path, monkeypatch):
    """--overwrite deleted last/ and best/ first: a new run failing at step 1 left neither."""
    x, y = _toy_data(64)
    _toy_trainer(tmp_path, _ToyLoader(x, y, 32), epochs=1).fit()
    run = tmp_path / "toy"
    old = weights(run, "best")
    old_files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def failing_step(self, *args):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "_train_step", failing_step)
        with pytest.raises(RuntimeError, match="out of memory"):
            _toy_trainer(tmp_path, _ToyLoader(x, y, 32), epochs=1, lr=0.5, overwrite=True).fit()
    assert_same_weights(weights(run, "best"), old)
    assert_same_weights(weights(run, "last"), old)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == old_files  # config.json too
    assert not (run / rundir.REPLACED_RUN).exists()

    # killed before its first save (set aside, never put back): the next start puts the old run back
    killed = _toy_trainer(tmp_path, _ToyLoader(x, y, 32), epochs=1, lr=0.5, overwrite=True)
    rundir.set_aside_run(run)
    assert not (run / "last").exists()
    resumed = _toy_trainer(tmp_path, _ToyLoader(x, y, 32), epochs=2, resume=True)
    resumed.fit()
    assert resumed.start_epoch == 1 and not (run / rundir.REPLACED_RUN).exists()

    killed.fit()  # an overwrite that saves replaces the old run
    assert len(ckpt.load_trainer_state(run)["history"]) == 1 and not (run / rundir.REPLACED_RUN).exists()


def test_an_image_size_the_model_cannot_take_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    import classicnets.data

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(classicnets.data, "build_loaders", no_data)
    with pytest.raises(ConfigError, match="image_size 32 does not fit alexnet_28, which takes 25 to 28 px"):
        classicnets.train(model="alexnet_28", image_size=32, out=str(tmp_path / "run"), device="cpu")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _toy_data()
    trainer = _toy_trainer(tmp_path, _ToyLoader(x, y, 32, poison_epoch=1), epochs=3)
    with pytest.raises(loop.NonFiniteLossError, match="NaN or infinite in epoch 2.*last good checkpoint"):
        trainer.fit()
    state = ckpt.load_trainer_state(tmp_path / "toy")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "toy").values())


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    x, y = _toy_data()
    full = _toy_trainer(tmp_path / "full", _ToyLoader(x, y, 32))
    full.fit()
    accumulated = _toy_trainer(tmp_path / "accum", _ToyLoader(x, y, 16), grad_accum_steps=2)
    accumulated.fit()
    assert accumulated.steps_per_epoch == full.steps_per_epoch == 8
    for a, b in zip(full.model.parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# The optimizer settings of every recipe, and Adam (which no recipe uses but the flags offer).
OPTIMIZER_SETTINGS = {
    **{name: {key: recipe[key] for key in ("optimizer", "lr", "momentum", "nesterov", "weight_decay",
                                           "schedule", "onecycle_pct") if key in recipe}
       for name, recipe in RECIPES.items()},
    "adam": dict(optimizer="adam", lr=1e-3, weight_decay=1e-4, schedule="cosine"),
}


# The layouts auto picks (fp32 contiguous, bf16 channels_last) in every run; the two others in slow runs.
LAYOUTS = [("fp32", False), ("bf16", True), pytest.param("fp32", True, marks=pytest.mark.slow),
           pytest.param("bf16", False, marks=pytest.mark.slow)]


@pytest.mark.parametrize("precision, channels_last", LAYOUTS)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_SETTINGS))
def test_resume_is_exact_for_every_optimizer_layout_and_precision(tmp_path, monkeypatch, optimizer,
                                                                  channels_last, precision):
    """Stopped in epoch 2 (its optimizer state already holds a whole epoch) and resumed: bit for bit the
    weights of the run never stopped. The fused Adam kernels read each moment with its weight's strides,
    so moments loaded in another memory layout than channels_last weights would pair wrong elements."""
    x, y = _toy_data(128)  # 4 steps an epoch
    settings = dict(OPTIMIZER_SETTINGS[optimizer], channels_last=channels_last, precision=precision,
                    deterministic=True)
    straight = _toy_trainer(tmp_path / "straight", _ToyLoader(x, y, 32), conv=True, **settings)
    straight.fit()
    interrupt_once_after_steps(4 + 2, monkeypatch)
    with pytest.raises(loop.TrainingInterrupted):
        _toy_trainer(tmp_path / "stopped", _ToyLoader(x, y, 32), conv=True, **settings).fit()
    resumed = _toy_trainer(tmp_path / "stopped", _ToyLoader(x, y, 32), conv=True, resume=True, **settings)
    resumed.fit()
    assert_same_weights(weights(tmp_path / "straight" / "toy"), weights(tmp_path / "stopped" / "toy"))
    for parameter, state in resumed.optimizer.state.items():  # the state follows its weight's layout
        assert all(v.stride() == parameter.stride() for v in state.values() if torch.is_tensor(v) and v.dim())


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args, **popen):
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "classicnets", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_train_cli_end_to_end(tmp_path):
    out = tmp_path / "cli"
    process = _cli("--model", "alexnet_28", "--model-options", "width_mult=0.0625", "--subset", "256",
                   "--epochs", "1", "--batch-size", "64", "--dataset", "synthetic",
                   "--out", str(out), "--precision", "bf16", "--channels-last")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert re.search(r'  precision +"bf16" +flag', stdout)  # the settings are printed with their sources
    line = next(line for line in stdout.splitlines() if line.startswith("epoch 1, loss "))
    assert "train acc" in line and "test acc" in line and line.endswith(" sec")
    record = json.loads((out / "metrics.jsonl").read_text())
    assert set(record) >= {"epoch", "train_loss", "train_acc", "test_acc", "test_top5", "images_per_sec",
                           "time", "lr"}
    assert 0.0 < record["test_acc"] <= 1.0 and record["images_per_sec"] > 0
    assert {p.name for p in (out / "best").iterdir()} == {ckpt.MODEL_FILE, ckpt.TRAINER_TENSORS_FILE,
                                                          ckpt.TRAINER_STATE_FILE}

    bad = tmp_path / "bad.yaml"
    bad.write_text("batchsize: 64\n")
    process = _cli("--config", str(bad), "--out", str(tmp_path / "never"))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and "did you mean batch_size" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("message, kernel", [
    ("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set ...",
     "adaptive_avg_pool2d_backward_cuda"),
    ("median CUDA with indices output does not have a deterministic implementation, but ...",
     "median CUDA with indices output"),
    ("Backend compiler failed\nRuntimeError: index_put_ with accumulate=False does not have a deterministic "
     "implementation, but ...", "index_put_ with accumulate=False"),
])
def test_the_deterministic_error_names_the_whole_kernel(message, kernel):
    assert loop._no_deterministic_kernel(message, torch.device("cuda")).startswith(
        f"--deterministic: {kernel} has no deterministic implementation on cuda")


def test_a_layer_without_a_deterministic_kernel_is_a_clear_error(tmp_path, monkeypatch):
    """On CUDA, adaptive pooling's backward has no deterministic kernel; put_ stands in for it on the CPU."""
    original = loop.Trainer._train_step

    def step_with_a_nondeterministic_kernel(self, *args):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))  # refused in deterministic mode
        original(self, *args)

    monkeypatch.setattr(loop.Trainer, "_train_step", step_with_a_nondeterministic_kernel)
    with pytest.raises(ConfigError, match="--deterministic: put_ has no deterministic implementation on cpu.*"
                                          "without --deterministic"):
        classicnets.train(tiny(tmp_path, epochs=1, subset=128))
    assert not torch.are_deterministic_algorithms_enabled()  # the global switch is restored
    classicnets.train(tiny(tmp_path, epochs=1, subset=128, deterministic=False,
                           overwrite=True))  # without it, the same kernel runs


def test_sigterm_saves_and_exits_143(tmp_path):
    out = tmp_path / "term"
    process = _cli("--model", "alexnet_28", "--model-options", "width_mult=0.0625", "--subset", "2048",
                   "--epochs", "50", "--batch-size", "32", "--dataset", "synthetic",
                   "--out", str(out), "--no-progress")
    try:
        for line in process.stdout:
            if line.startswith("epoch 1, "):
                break  # epoch 2 has begun
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    state = ckpt.load_trainer_state(out)
    assert 1 <= state["epoch"] < 50 and len(state["history"]) == state["epoch"]


# -------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_small_alexnet_learns_fashion_mnist(tmp_path, fashion_mnist_dir):
    """A quarter-width 28x28 AlexNet passes 0.80 test accuracy (all 10,000 test images) in about a minute."""
    start = time.perf_counter()
    history = classicnets.train(recipe="quick", subset=8000, epochs=3, batch_size=128,
                                data_dir=str(fashion_mnist_dir),
                                out=str(tmp_path / "learn"), progress=False)
    elapsed = time.perf_counter() - start
    assert history[-1]["test_acc"] > 0.80, history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    print(f"quick recipe, 8,000 images x 3 epochs: test acc {history[-1]['test_acc']:.3f} in {elapsed:.0f} s")


# ------------------------------------------------------------------------------------ auto speed settings


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_speed_settings_follow_the_hardware(monkeypatch, fast_bf16):
    monkeypatch.setattr(speed, "has_fast_bf16", lambda device: fast_bf16)
    config = speed.resolve_speed(TrainConfig(), torch.device("cpu"))
    assert (config.precision, config.channels_last, config.compile) == (
        ("bf16", True, False) if fast_bf16 else ("fp32", False, False))
    assert speed.resolve_speed(TrainConfig(compile=None), torch.device("cuda")).compile is True


def test_named_speed_settings_win_over_auto(monkeypatch):
    monkeypatch.setattr(speed, "has_fast_bf16", lambda device: True)
    config = TrainConfig(precision="fp32", channels_last=True, compile=False)
    assert speed.resolve_speed(config, torch.device("cpu")) == config
    assert speed.resolve_speed(TrainConfig(precision="bf16"), torch.device("cpu")).channels_last is True
    assert TrainConfig.from_recipe("fast").compile is None  # compiled on CUDA only


def test_speed_settings_are_decided_once_before_the_trainer(tmp_path):
    """classicnets.train decides them before the loaders (which need channels_last); a Trainer handed a
    config with auto settings left says so instead of deciding them a second time."""
    x, y = _toy_data(64)
    trainer = _toy_trainer(tmp_path, _ToyLoader(x, y, 32), epochs=1)
    with pytest.raises(ValueError, match="found channels_last left to auto.*resolve_speed"):
        loop.Trainer(trainer.model, trainer.train_loader, trainer.test_loader,
                     TrainConfig(precision="fp32", out=str(tmp_path / "auto")), ctx=trainer.ctx,
                     metadata=trainer.metadata)  # fmt: skip
    assert speed.left_to_auto(trainer.config) == []


def test_the_run_records_the_decided_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "has_fast_bf16", lambda device: True)
    x, y = _toy_data(64)
    trainer = _toy_trainer(tmp_path, _ToyLoader(x, y, 32), precision="auto", epochs=1)
    trainer.fit()
    saved = json.loads((tmp_path / "toy" / "config.json").read_text())
    assert (saved["precision"], saved["channels_last"], saved["compile"]) == ("bf16", True, False)


# ------------------------------------------------------------------------------ first-hour behaviour


def test_a_run_goes_to_runs_recipe_and_resumes_from_its_saved_settings(tmp_path, monkeypatch, capsys):
    assert resolve_config("d2l").out == "runs/d2l" and TrainConfig(model="nin").out == "runs/nin"
    settings = tiny(tmp_path, epochs=1, progress=True, log_every=2)
    monkeypatch.setattr(loop, "PROGRESS_LINE_SECONDS", 0.0)  # a line at every log_every read
    classicnets.train(settings)
    printed = capsys.readouterr().out
    assert "epoch 1/1: step 2/8, loss " in printed and "left in the epoch" in printed  # no terminal here
    assert re.search(r"  lr +0.05 +argument", printed)  # the short dump names sources
    assert "  seed " not in printed  # defaults are left out of it

    # --resume needs nothing but the folder: the saved settings, changed only where named
    resumed = resolve_config(None, overrides={"resume": True, "out": settings["out"], "epochs": 2})
    assert (resumed.lr, resumed.subset, resumed.model_options, resumed.epochs) == (0.05, 512, TINY[
        "model_options"], 2)
    assert resumed.sources["lr"] == "saved run" and resumed.sources["epochs"] == "argument"
    history = classicnets.train({"resume": True, "out": settings["out"], "epochs": 2, "progress": False})
    assert [r["epoch"] for r in history] == [1, 2]

    # the run's config.json is a config file for a new run (its resume/overwrite are not carried over)
    saved = Path(settings["out"]) / "config.json"
    values = load_config_file(saved)
    assert "resume" not in values and values["lr"] == 0.05
    again = resolve_config(None, values, {"out": str(tmp_path / "again")})
    assert (again.lr, again.subset, again.out) == (0.05, 512, str(tmp_path / "again"))


def test_resume_refuses_another_recipe_and_a_taken_folder_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    (run / ckpt.LAST).mkdir(parents=True)
    saved = {**TrainConfig.from_recipe("quick").to_dict(), "out": str(run)}
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="trained with recipe 'quick', not 'd2l'"):
        resolve_config("d2l", overrides={"resume": True, "out": str(run)})
    with pytest.raises(ConfigError, match="already holds a run"):
        rundir.check_run_dir(TrainConfig(out=str(run)))
    assert rundir.check_run_dir(TrainConfig(out=str(run), resume=True))


def test_show_settings_and_recipes_print_without_training(capsys):
    from classicnets.cli import main

    assert main(["train", "--recipe", "quick", "--epochs", "3", "--show-settings"]) == 0
    out = capsys.readouterr().out
    assert "epochs" in out and "flag" in out and "recipe quick" in out and "seed" in out  # every setting
    assert main(["recipes"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in RECIPES) and max(map(len, table.splitlines())) <= 80
    assert main(["recipes", "paper"]) == 0
    out = capsys.readouterr().out
    assert "ten-crop" in out and "recipe paper" in out and "runs/paper" in out
