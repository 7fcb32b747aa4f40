"""Every input is validated once, in one place, and a bad one is a clear error, never a traceback.

The settings (TrainConfig, from Python, files or flags) are checked by ``training.config.validate``; a
checkpoint's header by ``checkpoint.validate_metadata``; a model's options by
``registry.check_model_options``. Hypothesis feeds each random values: the answer is a valid result or a
:class:`ClassicnetsError`, never another exception. The CLI cases are the adversarial table of
docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classicnets.checkpoint import (
    load_model,
    load_trainer_state,
    model_metadata,
    save_checkpoint,
    validate_metadata,
)
from classicnets.cli import main
from classicnets.errors import CheckpointError, ClassicnetsError, ConfigError
from classicnets.registry import create_model
from classicnets.training.config import FIELD_NAMES, TrainConfig, config_from_dict, resolve_config

MODEL, OPTIONS = "alexnet_28", {"width_mult": 0.0625}  # 23k parameters: built in milliseconds


def _cli_error(argv: list[str], capsys) -> str:
    """The message of a CLI run that must fail cleanly: exit status 2, one line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"classicnets {argv[0]}: error: "), err
    return err


# --------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "nan"], "lr=nan must be a finite number"),
    (["--lr", "inf"], "lr=inf must be a finite number"),
    (["--momentum", "nan"], "momentum=nan must be a finite number"),
    (["--grad-clip", "nan"], "grad_clip=nan must be a finite number"),
    (["--betas", "2,3"], r"betas=\(2.0, 3.0\) must be two numbers in \[0, 1\)"),
    (["--betas", "0.9"], "betas must be two numbers"),
    (["--seed", "-1"], "seed=-1 must be between 0 and"),
    (["--num-workers", "-1"], "num_workers=-1 must be 0 or more"),
    (["--gamma", "-5"], r"gamma=-5.0 must be in \(0, 1\]"),
    (["--momentum", "1.5"], r"momentum=1.5 must be in \[0, 1\)"),
    (["--image-size", "100000"], "image_size=100000 must be between 1 and 4096"),
    (["--model-options", "width_mult=abc"], "option width_mult='abc' should be a finite number"),
    (["--model-options", "width_mult=1000"], r"width_mult must be a number in \(0, 8\]"),
    (["--model-options", "num_classes=3"], "model_options cannot set num_classes"),
    (["--model", "alexnet_28", "--image-size", "64"],
     "image_size 64 does not fit alexnet_28, which takes 25 to 28"),
])
def test_bad_settings_are_one_clear_error_before_anything_runs(flags, message, capsys, tmp_path):
    err = _cli_error(["train", *flags, "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_the_same_checks_apply_to_a_config_built_in_python():
    with pytest.raises(ConfigError, match="lr=nan must be a finite number"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="epochs='3' should be a whole number"):
        TrainConfig(epochs="3")
    with pytest.raises(ConfigError, match="normalize=1 should be true or false"):
        TrainConfig(normalize=1)
    assert TrainConfig(betas=[0.5, 0.9]).betas == (0.5, 0.9)  # a list (JSON, YAML) becomes the tuple
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


def test_parsers_refuse_abbreviated_flags(capsys):
    # argparse's prefix matching would take --epoch for --epochs, and --lr-x for nothing it says
    with pytest.raises(SystemExit):
        main(["train", "--epoch", "3"])
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "alexnet_28", "--num-class", "3"])


def test_summary_option_of_the_wrong_type_is_a_clear_error(capsys):
    err = _cli_error(["summary", "alexnet_28", "--option", "width_mult=abc"], capsys)
    assert "option width_mult='abc' should be a finite number" in err


def test_builder_options_are_checked_before_building():
    with pytest.raises(ClassicnetsError, match="width_mult='abc' should be a finite number"):
        create_model("alexnet_d2l", width_mult="abc")
    with pytest.raises(ClassicnetsError, match=r"width_mult must be a number in \(0, 8\]"):
        create_model("resnet18", width_mult=9)
    with pytest.raises(ClassicnetsError, match="width_mult=inf should be a finite number"):
        create_model("resnet18", width_mult=float("inf"))
    with pytest.raises(ClassicnetsError, match="lrn=1 should be true or false"):
        create_model("alexnet", lrn=1)
    with pytest.raises(ClassicnetsError, match="num_classes must be a positive whole number"):
        create_model("nin", num_classes=0)


def test_resume_with_an_out_that_is_not_a_path_is_a_clear_error():
    """Found by the test below: the run folder was opened before the settings were checked."""
    with pytest.raises(ConfigError, match="out=True should be a string or none"):
        resolve_config(None, {}, {"out": True, "resume": True})


def test_none_unsets_an_optional_setting_in_python_as_in_flags_and_files():
    """Found by the test below: TrainConfig(data_dir="NONE") kept the word, its saved copy read None."""
    config = TrainConfig(data_dir="NONE", subset="null")
    assert config.data_dir is None and config.subset is None
    assert config_from_dict(config.to_dict()) == config


# Values of every kind a file, a flag or a Python caller might hand over.
_ANY = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-1", "0", "1e9", "none", "true", "2,3", "0.9,0.999", "width_mult=abc",
                     "{\"width_mult\": 1e9}", "{", "sgd", "flip", "auto", "x" * 3]),
    st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=10), st.one_of(st.floats(), st.integers(), st.text(max_size=3),
                                                    st.booleans()), max_size=2),
)
_FIELDS = st.dictionaries(st.sampled_from(FIELD_NAMES + ("not_a_field",)), _ANY, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=_FIELDS)
def test_random_settings_give_a_valid_config_or_a_clear_error(values):
    for make in (lambda: resolve_config(None, {}, values), lambda: config_from_dict(values),
                 lambda: TrainConfig(**{k: v for k, v in values.items() if k in FIELD_NAMES})):
        try:
            config = make()
        except ClassicnetsError:
            continue
        # whatever is accepted is in range: finite numbers, a config that survives its own round trip
        for value in dataclasses.asdict(config).values():
            if isinstance(value, float):
                assert math.isfinite(value)
        assert config_from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------ checkpoint header


def _header(**changes) -> dict[str, str]:
    header = model_metadata(model=MODEL, model_options=OPTIONS, num_classes=3, in_channels=1,
                            classes=["a", "b", "c"], image_size=28, mean=[0.5], std=[0.25], dataset="x")
    header.update(changes)
    return header


@pytest.mark.parametrize(("changes", "message"), [
    ({"image_size": "0"}, "image_size is '0', expected a whole number from 1 to 4,096"),
    ({"image_size": "-3"}, "image_size is '-3'"),
    ({"image_size": "100000"}, "image_size is '100000'"),
    ({"image_size": "2.5"}, "image_size is '2.5'"),
    ({"classes": json.dumps({"a": 1})}, "classes is .*expected a JSON list of class names"),
    ({"classes": "[1, 2, 3]"}, "classes is .*expected a JSON list of class names"),
    ({"classes": json.dumps(["a", "b"])}, "lists 2 class names for num_classes=3"),
    ({"mean": json.dumps("grey")}, "mean is .*expected null or a JSON list of 1 finite numbers"),
    ({"mean": "[NaN]"}, "mean is '\\[NaN\\]'"),
    ({"std": "[0]"}, "all positive"),
    ({"std": "null"}, "a mean but no std"),
    ({"num_classes": "0"}, "num_classes is '0'"),
    ({"in_channels": "1000000"}, "in_channels is '1000000'"),
    ({"model_options": "[]"}, "model_options is '\\[\\]'"),
    ({"model_options": "{"}, "model_options is '{'"),
    ({"format": "99"}, "uses checkpoint format 99, newer than this classicnets reads"),
])
def test_a_bad_header_field_is_named(changes, message):
    with pytest.raises(CheckpointError, match=message):
        validate_metadata(_header(**changes), "ckpt")


_HEADER_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["0", "-1", "1", "3", "28", "100000", "1e3", " 28", "null", "[]", "{}", "[0.5]", "[0]",
                     '["a", "b", "c"]', '"abc"', "[NaN]", "[Infinity]", '{"width_mult": 1e9}', "[[[[]]]]"]),
    st.integers().map(str), st.floats().map(json.dumps),
    st.lists(st.one_of(st.text(max_size=3), st.floats(), st.integers()), max_size=4).map(json.dumps),
)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(["format", "model", "model_options", "num_classes",
                                                "in_channels", "classes", "image_size", "mean", "std",
                                                "dataset"]),
                               _HEADER_VALUES, max_size=4),
       drop=st.sets(st.sampled_from(["format", "model_options", "classes", "image_size", "mean", "std"]),
                    max_size=2))
def test_random_headers_are_validated_or_refused_clearly(changes, drop):
    header = _header(**changes)
    for key in drop:
        header.pop(key)
    try:
        decoded = validate_metadata(header, "ckpt")
    except CheckpointError:
        return
    assert 1 <= decoded["image_size"] <= 4096 and 1 <= decoded["in_channels"] <= 64
    assert isinstance(decoded["classes"], list) and len(decoded["classes"]) == decoded["num_classes"]
    assert isinstance(decoded["model_options"], dict)
    for key in ("mean", "std"):
        assert decoded[key] is None or len(decoded[key]) == decoded["in_channels"]


def _saved(tmp_path, **changes):
    model = create_model(MODEL, num_classes=3, in_channels=1, **OPTIONS)
    save_checkpoint(tmp_path, model_state=model.state_dict(), metadata=_header(**changes),
                    trainer_state={"epoch": 1, "tensor": torch.zeros(2)})
    return tmp_path


def test_a_header_asking_for_a_huge_model_is_refused_before_allocating(tmp_path):
    # width_mult 8 makes alexnet_28 3 billion parameters (12 GB): built on the meta device, its shapes are
    # compared with the file's 23k weights in milliseconds; an allocation would take minutes or the machine
    run = _saved(tmp_path, model_options=json.dumps({"width_mult": 8}))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="the weights do not fit model 'alexnet_28'"):
        load_model(run)
    assert time.perf_counter() - start < 5
    with pytest.raises(CheckpointError, match=r"width_mult must be a number in \(0, 8\]"):
        load_model(_saved(tmp_path, model_options=json.dumps({"width_mult": 1000})))
    with pytest.raises(CheckpointError, match="image_size 4096 is not one model 'alexnet_28' takes"):
        load_model(_saved(tmp_path, image_size="4096"))


def test_eval_of_a_bad_header_is_a_clear_error(tmp_path, capsys):
    err = _cli_error(["eval", str(_saved(tmp_path, image_size="0"))], capsys)
    assert "image_size is '0'" in err


def test_trainer_state_naming_a_missing_tensor_is_a_clear_error(tmp_path):
    run = _saved(tmp_path)
    state_file = run / "last" / "trainer.json"
    state_file.write_text(state_file.read_text().replace('"trainer.', '"nowhere.'))
    with pytest.raises(CheckpointError, match="names the tensor 'nowhere.*which trainer.safetensors lacks"):
        load_trainer_state(run)
    state_file.write_text('{"__dict__": [[1]]}')
    with pytest.raises(CheckpointError, match="trainer.json is malformed"):
        load_trainer_state(run)


# ------------------------------------------------------------------------------------- failed saves


def test_a_failed_save_stops_training_at_once_naming_the_path(tmp_path, monkeypatch):
    import errno

    import classicnets
    from classicnets import checkpoint as ckpt

    def full_disk(run_dir, snapshot, is_best):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_checkpoint", full_disk)
    out = tmp_path / "run"
    message = rf"writing the checkpoint {out}/last failed: .*No space left on device; free some space"
    with pytest.raises(CheckpointError, match=message):
        classicnets.train(model=MODEL, model_options=OPTIONS, dataset="synthetic", subset=160, batch_size=16,
                          epochs=2, device="cpu", progress=False, out=str(out), precision="fp32")
    # the first epoch's save failed: training stopped in the second epoch instead of finishing it first
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------- paths and images


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height grey pixels but holds a few bytes: what a decompression bomb's
    header looks like to a reader."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [20000, 13000])
def test_predict_refuses_a_decompression_bomb_before_decoding(side, tmp_path, capsys):
    _png_header_only(tmp_path / "bomb.png", side, side)
    err = _cli_error(["predict", str(_saved(tmp_path)), str(tmp_path / "bomb.png")], capsys)
    assert "bomb.png is not an image predict can use" in err and "decompression bomb" in err


def test_predict_refuses_a_named_pipe_instead_of_waiting_on_it(tmp_path, capsys):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    err = _cli_error(["predict", str(_saved(tmp_path)), str(tmp_path / "pipe.png")], capsys)
    assert "pipe.png is not a regular file" in err


def test_urls_are_not_taken_for_missing_paths(tmp_path, capsys):
    url = "https://example.com/run"
    for argv in (["eval", url], ["predict", str(_saved(tmp_path)), url + "/cat.png"],
                 ["export", url, "--format", "torchscript"],
                 ["train", "--dataset", url + "/data.tgz", "--out", str(tmp_path / "r")],
                 ["train", "--data-dir", url, "--out", str(tmp_path / "r")]):
        err = _cli_error(argv, capsys)
        assert "is a URL; classicnets reads local files and folders only" in err and "https:/e" not in err


def test_a_data_dir_that_is_a_file_is_named(tmp_path, capsys):
    from classicnets import build_loaders

    file = tmp_path / "images.tgz"
    file.write_bytes(b"not a folder")
    for dataset in ("fashion-mnist", "imagefolder"):
        with pytest.raises(ClassicnetsError, match=f"data_dir {file} is a file, not a folder"):
            build_loaders(dataset, data_dir=file, image_size=28, batch_size=8)
    with pytest.raises(ClassicnetsError, match=f"image folder {file} is a file, not a folder"):
        build_loaders(str(file), image_size=28, batch_size=8)


def test_an_unreadable_image_folder_is_named(tmp_path, monkeypatch):
    from pathlib import Path

    from classicnets.data.formats import scan_image_folder

    (tmp_path / "train" / "cat").mkdir(parents=True)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == tmp_path / "train":  # as os.scandir fails on a folder without read permission
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(ClassicnetsError, match=f"cannot read {tmp_path / 'train'}: permission denied"):
        scan_image_folder(tmp_path / "train")
    monkeypatch.setattr(Path, "iterdir", real_iterdir)
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a class folder rglob cannot list
    with pytest.raises(ClassicnetsError, match="cat: permission denied"):
        scan_image_folder(tmp_path / "train")


def test_export_onto_a_folder_and_of_nan_weights_are_clear_errors(tmp_path, capsys):
    run = _saved(tmp_path)
    (tmp_path / "exports").mkdir()
    err = _cli_error(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "exports")],
                     capsys)
    assert "is a folder; pass the file to write, e.g. --out" in err
    model = create_model(MODEL, num_classes=3, in_channels=1, **OPTIONS)
    state = {k: v.fill_(float("nan")) if k.endswith("fc8.weight") else v
             for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "nan", model_state=state, metadata=_header(), trainer_state={})
    err = _cli_error(["export", str(tmp_path / "nan"), "--format", "torchscript"], capsys)
    # refused when read (checkpoint.check_finite), before any export is tried
    assert "NaN or infinite value(s)" in err and "cannot be used" in err and "--tolerance" not in err
    assert not list((tmp_path / "nan").glob("*.pt"))  # nothing written


def test_on_bad_and_max_pixels_are_flags_and_the_messages_name_them(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (16, 16), 60 * i).save(tmp_path / split / label / f"{i}.png")
    Image.new("L", (400, 400)).save(tmp_path / "train" / "dog" / "huge.png")
    argv = ["train", "--dataset", str(tmp_path), "--model", MODEL, "--model-options", "width_mult=0.0625",
            "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run"), "--max-pixels", "10000", "--on-bad", "error"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's mean/std sample skips the file before the epoch stops
        err = _cli_error(argv, capsys)
    assert "huge.png is 400x400 = 160,000 pixels, above the limit of 10,000" in err
    assert "--max-pixels N when training" in err and "--on-bad skip" in err


# ------------------------------------------------------------------------------------ defaults that learn


def _fashion_png_folder(root, fashion_mnist_dir, per_train: int, per_val: int):
    """An image folder a user might have: train/ and val/ of PNG files, one sub-folder per class, made from
    the real Fashion-MNIST (classicnets has never seen it as a folder: no cached statistics, no names)."""
    import numpy as np
    from PIL import Image

    import classicnets

    for split, source, count in (("train", "train", per_train), ("val", "test", per_val)):
        data = classicnets.load_dataset("fashion-mnist", source, data_dir=fashion_mnist_dir, download=False)
        labels = np.asarray(data.labels)
        for label, name in enumerate(data.classes):
            folder = root / split / name.replace("/", "-")
            folder.mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(labels == label)[:count]):
                Image.fromarray(np.asarray(data.images[index, 0])).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_new_folder_learns_with_the_default_settings(tmp_path, fashion_mnist_dir, capsys):
    """No recipe named: the `default` recipe. The quick recipe's small net keeps the test within seconds;
    every optimisation setting is the default. Before the `default` recipe, these were d2l's plain SGD on
    unnormalised pixels, which stays near chance on this folder in these steps (docs/reliability.md)."""
    folder = _fashion_png_folder(tmp_path / "folder", fashion_mnist_dir, per_train=140, per_val=30)
    argv = ["train", "--dataset", str(folder), "--model", "alexnet_28", "--model-options", "width_mult=0.25",
            "--epochs", "4", "--num-workers", "0", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "settings (recipe default)" in printed and "recipe default (no --recipe named)" in printed
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["test_acc"] >= 0.6  # 10 classes: chance is 0.1
