"""Starting from weights: torchvision-format files, strict matching, a new head, refusals, fine-tuning
settings, ImageNet class names, torch.hub entry points and TensorBoard logs.

The weights files are made the way torchvision makes its own (``torch.save(model.state_dict(), path)``)
from the zoo's torchvision-compatible models, narrowed with ``width_mult`` so that the tests stay fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import classicnets
from classicnets import checkpoint as ckpt
from classicnets.cli import main
from classicnets.errors import CheckpointError, ConfigError
from classicnets.weights import (
    classifier_keys,
    head_parameter_names,
    imagenet_classes,
    load_weights,
    read_weights,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width_mult": 0.25}


def save_state_dict(path: Path, name: str, **options) -> dict[str, torch.Tensor]:
    """A torchvision-format weights file: the model's state_dict, pickled by torch.save."""
    model = classicnets.create_model(name, **options)
    torch.save(model.state_dict(), path)
    return model.state_dict()


# ------------------------------------------------------------------------------------ strict loading


@pytest.mark.parametrize("name, options", [("resnet18", SMALL), ("alexnet_owt", {"width_mult": 0.0625})])
def test_a_torchvision_state_dict_loads_strictly_and_gives_the_same_outputs(tmp_path, name, options):
    torch.manual_seed(1)
    source = classicnets.create_model(name, **options).eval()
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    torch.manual_seed(2)  # another initialisation, overwritten by the file
    model = classicnets.create_model(name, **options).eval()
    report = load_weights(model, tmp_path / "weights.pth", name=name, options=options)
    assert report.loaded == list(source.state_dict())
    assert report.reinitialised == report.ignored == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_another_number_of_classes_loads_the_backbone_and_keeps_a_fresh_head(tmp_path):
    file = save_state_dict(tmp_path / "r18.pth", "resnet18", **SMALL)  # 1000 classes
    torch.manual_seed(5)
    fresh = classicnets.create_model("resnet18", num_classes=10, **SMALL)
    torch.manual_seed(5)
    model = classicnets.create_model("resnet18", num_classes=10, **SMALL)
    report = load_weights(model, tmp_path / "r18.pth", name="resnet18", options=SMALL)
    assert report.reinitialised == report.ignored == ["fc.weight", "fc.bias"]
    assert report.class_change == (1000, 10)
    assert len(report.loaded) == len(file) - 2
    state = model.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], file[key]), key
    assert torch.equal(model.fc.weight, fresh.fc.weight)  # the model's own initialisation, untouched
    text = str(report)
    assert "re-initialised (the file has 1000 classes, the model 10): fc.weight, fc.bias" in text
    assert "ignored from the file: fc.weight, fc.bias" in text


def test_the_classifier_and_head_are_found_for_every_family():
    assert classifier_keys("resnet18") == {"fc.weight", "fc.bias"}
    assert classifier_keys("vgg11") == {"classifier.6.weight", "classifier.6.bias"}
    assert classifier_keys("alexnet") == {"classifier.fc8.weight", "classifier.fc8.bias"}
    assert head_parameter_names("resnet18") == {"fc.weight", "fc.bias"}
    assert head_parameter_names("alexnet_owt") == {f"classifier.{i}.{p}" for i in (1, 4, 6)
                                                   for p in ("weight", "bias")}
    assert {k for k in head_parameter_names("nin")} == classifier_keys("nin")  # one map per class


def test_container_and_wrapper_prefixes_are_unwrapped(tmp_path):
    state = save_state_dict(tmp_path / "plain.pth", "resnet18", **SMALL)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    file = read_weights(tmp_path / "ddp.pth")
    assert file.state.keys() == state.keys()
    assert file.notes == ["the state_dict under 'state_dict'", "'module.' prefix removed"]


def test_safetensors_and_run_directories_load(tmp_path):
    from safetensors.torch import save_file

    state = save_state_dict(tmp_path / "w.pth", "resnet18", **SMALL)
    save_file(state, str(tmp_path / "w.safetensors"))
    model = classicnets.create_model("resnet18", **SMALL)
    assert load_weights(model, tmp_path / "w.safetensors", name="resnet18", options=SMALL).loaded


# ------------------------------------------------------------------------------------------ refusals


class _CreatesAFile:
    """Unpickling this object would call open(marker, "w"): code that runs on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    state = save_state_dict(tmp_path / "ok.pth", "resnet18", **SMALL)
    torch.save({**state, "extra": _CreatesAFile(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused .*evil.pth: it holds Python objects other than "
                                              r"tensors \(it would call io.open\).*could run arbitrary code"):
        read_weights(tmp_path / "evil.pth")
    assert not marker.exists()


def test_files_that_are_not_weights_get_clear_errors(tmp_path):
    (tmp_path / "notes.pth").write_text("not a weights file")
    with pytest.raises(CheckpointError, match="notes.pth is not a torch.save file"):
        read_weights(tmp_path / "notes.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pth")
    with pytest.raises(CheckpointError, match="not a state_dict of tensors"):
        read_weights(tmp_path / "numbers.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")


def test_weights_for_another_model_name_both(tmp_path):
    save_state_dict(tmp_path / "r34.pth", "resnet34", **SMALL)
    model = classicnets.create_model("resnet18", **SMALL)
    with pytest.raises(CheckpointError) as error:
        load_weights(model, tmp_path / "r34.pth", name="resnet18", options=SMALL)
    message = str(error.value)
    assert "do not fit resnet18" in message and "weights for resnet34, not resnet18" in message
    assert "not in the model: layer1.2.conv1.weight 16x16x3x3" in message


def test_other_sizes_and_channels_are_errors_that_say_which(tmp_path):
    save_state_dict(tmp_path / "r18.pth", "resnet18", **SMALL)
    wider = classicnets.create_model("resnet18", width_mult=0.5)
    with pytest.raises(CheckpointError, match="with other shapes .*conv1.weight 16x3x7x7 vs 32x3x7x7.*"
                                              "other options"):
        load_weights(wider, tmp_path / "r18.pth", name="resnet18", options={"width_mult": 0.5})
    grey = classicnets.create_model("resnet18", in_channels=1, **SMALL)
    with pytest.raises(CheckpointError, match="takes 3-channel images and this one 1"):
        load_weights(grey, tmp_path / "r18.pth", name="resnet18", options=SMALL)


# ----------------------------------------------------------------------------------------- fine-tuning


def _finetune(tmp_path: Path, weights: Path, out: str, **changes) -> list[dict]:
    # fp32: under CPU bf16 autocast the weight gradient of layer4's strided conv on a 1x1 map (16 px input)
    # sometimes comes out as garbage (torch 2.13, oneDNN), which this test is not about
    settings = dict(recipe="finetune", weights=str(weights), model_options=SMALL, dataset="synthetic",
                    image_size=16, subset=32, batch_size=16, eval_batch_size=512, epochs=1, device="cpu",
                    precision="fp32", progress=False, deterministic=True, num_workers=0,
                    out=str(tmp_path / out))
    return classicnets.train(**{**settings, **changes})


def test_a_frozen_backbone_keeps_the_files_weights_exactly_and_trains_a_new_head(tmp_path, capsys):
    # synthetic data is grey, 10 classes: the file is the 1-channel ImageNet-sized net
    file = save_state_dict(tmp_path / "r18.pth", "resnet18", in_channels=1, **SMALL)
    _finetune(tmp_path, tmp_path / "r18.pth", "frozen", freeze_epochs=-1, epochs=2)
    out = capsys.readouterr().out
    assert "re-initialised (the file has 1000 classes, the model 10): fc.weight, fc.bias" in out
    assert "backbone frozen for the whole run: training the head's 1,290 parameters" in out
    trained = ckpt.load_model_weights(tmp_path / "frozen" / "last")[0]
    for key, value in file.items():
        if not key.startswith("fc."):  # weights and BatchNorm statistics: untouched
            assert torch.equal(trained[key], value), key
    assert trained["fc.weight"].shape == (10, 128)


@pytest.mark.slow
def test_backbone_lr_and_a_freeze_that_ends(tmp_path):
    file = save_state_dict(tmp_path / "r18.pth", "resnet18", in_channels=1, **SMALL)
    history = _finetune(tmp_path, tmp_path / "r18.pth", "thawed", freeze_epochs=1, epochs=2,
                        schedule="constant")
    assert [r["lr"] for r in history] == [0.01, 0.01]
    assert [r["lr_backbone"] for r in history] == pytest.approx([0.001, 0.001])
    trained = ckpt.load_model_weights(tmp_path / "thawed" / "last")[0]
    assert not torch.equal(trained["conv1.weight"], file["conv1.weight"])  # trained in epoch 2
    assert not torch.equal(trained["bn1.running_mean"], file["bn1.running_mean"])


SAVE_EACH_RANK = """
import sys, torch
from classicnets.training import loop

fit = loop.Trainer.fit

def fit_then_save_this_ranks_parameters(self):
    history = fit(self)
    torch.save(dict(self.model.named_parameters()), f"{self.config.out}/rank{self.ctx.rank}.pt")
    return history

loop.Trainer.fit = fit_then_save_this_ranks_parameters
from classicnets.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_two_ranks_train_the_thawed_backbone_together(tmp_path):
    """DDP reduces the gradients of the parameters trainable when it was built: the trainer rebuilds it when
    the backbone thaws, so both ranks' backbones stay equal."""
    import os
    import subprocess
    import sys

    file = save_state_dict(tmp_path / "r18.pth", "resnet18", in_channels=1, **SMALL)
    (tmp_path / "run.py").write_text(SAVE_EACH_RANK)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(tmp_path / "run.py"),
         "train", "--recipe", "finetune", "--weights", str(tmp_path / "r18.pth"), "--model-options",
         "width_mult=0.25", "--dataset", "synthetic", "--image-size", "16", "--subset", "32", "--batch-size",
         "16", "--eval-batch-size", "512", "--epochs", "2", "--precision", "fp32", "--device", "cpu",
         "--num-workers", "0", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(ranks[0]["layer1.0.conv1.weight"], file["layer1.0.conv1.weight"])  # it trained


def test_finetune_settings_are_checked():
    with pytest.raises(ConfigError, match="freeze_epochs=-2"):
        classicnets.TrainConfig(freeze_epochs=-2)
    with pytest.raises(ConfigError, match="backbone_lr_mult=-1"):
        classicnets.TrainConfig(backbone_lr_mult=-1)
    recipe = classicnets.TrainConfig.from_recipe("finetune")
    assert (recipe.model, recipe.freeze_epochs, recipe.backbone_lr_mult) == ("resnet18", 1, 0.1)


@pytest.mark.slow
def test_tensorboard_events_hold_the_step_and_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save_state_dict(tmp_path / "r18.pth", "resnet18", in_channels=1, **SMALL)
    history = _finetune(tmp_path, tmp_path / "r18.pth", "tb", epochs=2, log_to="tensorboard", log_every=1)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("step/train_loss", "step/train_acc", "step/lr", "step/lr_backbone", "step/images_per_sec",
                "epoch/test_acc", "epoch/train_loss", "epoch/images_per_sec"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("step/train_loss")] == [1, 2, 3, 4]  # 2 steps an epoch
    assert [e.value for e in events.Scalars("epoch/test_acc")] == pytest.approx(
        [r["test_acc"] for r in history])
    assert [e.step for e in events.Images("kernels/first_conv")] == [1, 2]
    assert (tmp_path / "tb" / "metrics.jsonl").exists()  # the file logs stay


# ---------------------------------------------------------------------------- eval, predict, summary


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[1], names[281], names[954], names[999]) == (
        "tench", "goldfish", "tabby", "banana", "toilet tissue")
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.txt" in package_data["classicnets.data"]


def _photo(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_predict_with_imagenet_weights_prints_imagenet_names(tmp_path, capsys):
    save_state_dict(tmp_path / "r18.pth", "resnet18")  # torchvision's resnet18 layout, 1000 classes
    image = _photo(tmp_path / "photo.png")
    predictions = classicnets.predict("resnet18", [image], weights=tmp_path / "r18.pth", top_k=3)
    assert len(predictions[0].top) == 3
    assert all(name in imagenet_classes() for name, _ in predictions[0].top)
    assert main(["predict", "resnet18", "--weights", str(tmp_path / "r18.pth"), str(image), "--json"]) == 0
    captured = capsys.readouterr()
    assert "122 tensors loaded into resnet18" in captured.err
    top = [row["class"] for row in json.loads(captured.out)[0]["top"]]
    assert top == [name for name, _ in classicnets.predict("resnet18", [image], weights=tmp_path / "r18.pth")[
        0].top]


def test_the_cli_commands_take_weights(tmp_path, capsys):
    torch.manual_seed(0)
    save_state_dict(tmp_path / "owt.pth", "alexnet_owt", num_classes=3, width_mult=0.0625)
    # a run directory: its header says the options, so predict and export need only the model name
    header = ckpt.model_metadata(model="alexnet_owt", model_options={"width_mult": 0.0625}, num_classes=3,
                                 in_channels=3, classes=["a", "b", "c"], image_size=64, mean=None, std=None,
                                 dataset="")
    state = torch.load(tmp_path / "owt.pth", weights_only=True)
    ckpt.save_checkpoint(tmp_path / "run", model_state=state, metadata=header, trainer_state={})
    image = _photo(tmp_path / "photo.png")
    assert main(["predict", "alexnet_owt", "--weights", str(tmp_path / "run"), str(image), "--json"]) == 0
    captured = capsys.readouterr()
    assert "16 tensors loaded into alexnet_owt" in captured.err
    assert {row["class"] for row in json.loads(captured.out)[0]["top"]} == {"a", "b", "c"}
    out = tmp_path / "owt.torchscript.pt"
    assert main(["export", "alexnet_owt", "--weights", str(tmp_path / "run"), "--format", "torchscript",
                 "--out", str(out)]) == 0
    assert out.exists() and "16 tensors loaded" in capsys.readouterr().out
    assert main(["predict", "resnet18", "--weights", str(tmp_path / "run"), str(image)]) == 2
    assert "checkpoint of 'alexnet_owt', not 'resnet18'" in capsys.readouterr().err
    assert main(["summary", "alexnet_owt", "--weights", str(tmp_path / "owt.pth"), "--option",
                 "width_mult=0.0625", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "16 tensors loaded into alexnet_owt" in captured.err
    assert json.loads(captured.out)["totals"]["params"] == sum(v.numel() for v in state.values())


def test_summarize_and_the_public_api_take_weights(tmp_path):
    file = save_state_dict(tmp_path / "r18.pth", "resnet18", **SMALL)
    model = classicnets.create_model("resnet18", **SMALL)
    summary = classicnets.summarize(model, input_size=(3, 64, 64), weights=tmp_path / "r18.pth")
    assert summary.totals.params == sum(p.numel() for p in model.parameters())
    assert torch.equal(model.conv1.weight, file["conv1.weight"])
    with pytest.raises(CheckpointError, match="do not fit resnet34"):
        classicnets.summarize(classicnets.create_model("resnet34", **SMALL), weights=tmp_path / "r18.pth")
    assert classicnets.load_weights is load_weights


# ---------------------------------------------------------------------------------------- torch.hub


def test_torch_hub_builds_zoo_models_from_this_repository(tmp_path):
    model = torch.hub.load(str(ROOT), "alexnet_28", source="local", trust_repo=True, width_mult=0.0625)
    assert type(model).__name__ == "AlexNet" and model.classifier.fc8.out_features == 10
    save_state_dict(tmp_path / "r18.pth", "resnet18", **SMALL)
    model = torch.hub.load(str(ROOT), "resnet18", source="local", trust_repo=True, num_classes=4,
                           weights=str(tmp_path / "r18.pth"), **SMALL)
    assert model.fc.out_features == 4
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch"]
    assert all(callable(getattr(hubconf, name)) for name in classicnets.list_models())
