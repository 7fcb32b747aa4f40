"""Evaluation, prediction and export of checkpoints, end to end on the real Fashion-MNIST.

One tiny AlexNet (d2l's 28x28 variant at 1/16 width) is trained once for the module on 3,000 real training
images (seconds on two cores), saved with the trainer's checkpoint writer, then evaluated, asked to classify
image files and exported. The crafted-checkpoint tests prove that a pickle payload never runs.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import classicnets
from classicnets.checkpoint import Preprocessing, load_model, model_metadata, save_checkpoint
from classicnets.cli import main
from classicnets.errors import CheckpointError, ClassicnetsError, ConfigError
from classicnets.inference import (
    ExportVerificationError,
    MissingDependencyError,
    TTAWarning,
    prepare_batch,
)

MODEL, OPTIONS = "alexnet_28", {"width_mult": 0.0625}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's training-set pixel mean and std
TRAIN_IMAGES = 3000


def _metadata(model: str = MODEL, options: dict | None = None, classes=FASHION_CLASSES) -> dict[str, str]:
    return model_metadata(model=model, model_options=OPTIONS if options is None else options,
                          num_classes=len(classes), in_channels=1, classes=classes, image_size=28,
                          mean=MEAN, std=STD, dataset="fashion-mnist")


@pytest.fixture(scope="module")
def fashion_test(fashion_mnist_dir):
    data = classicnets.load_dataset("fashion-mnist", "test", data_dir=fashion_mnist_dir, download=False)
    return torch.as_tensor(data.images), torch.as_tensor(data.labels)


@pytest.fixture(scope="module")
def trained_run(fashion_mnist_dir, tmp_path_factory) -> Path:
    """A run directory holding a tiny AlexNet trained for two epochs on 3,000 real Fashion-MNIST images.

    Random mirroring in training, as the recipes' "flip" augmentation does, so flip TTA is fair to it.
    """
    torch.manual_seed(0)
    data = classicnets.load_dataset("fashion-mnist", "train", data_dir=fashion_mnist_dir, download=False)
    images, labels = torch.as_tensor(data.images[:TRAIN_IMAGES]), torch.as_tensor(data.labels[:TRAIN_IMAGES])
    model = classicnets.create_model(MODEL, num_classes=10, in_channels=1, **OPTIONS)
    model = model.to(memory_format=torch.channels_last)
    prep = Preprocessing(in_channels=1, image_size=28, mean=MEAN, std=STD)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(2):
        for batch in torch.randperm(TRAIN_IMAGES).split(100):
            x = prepare_batch(images[batch], prep, channels_last=True)
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, model_state=model.state_dict(), metadata=_metadata(), trainer_state={"epoch": 2},
                    is_best=True)
    return run


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    """A run directory with an untrained tiny AlexNet: for the tests of the checkpoint and export mechanics,
    which need a valid checkpoint but no data (they run without the Fashion-MNIST package)."""
    torch.manual_seed(0)
    model = classicnets.create_model(MODEL, num_classes=10, in_channels=1, **OPTIONS)
    run = tmp_path_factory.mktemp("untrained")
    save_checkpoint(run, model_state=model.state_dict(), metadata=_metadata(), trainer_state={"epoch": 0},
                    is_best=True)
    return run


def _images(count: int) -> torch.Tensor:
    """Generated uint8 28x28 grey images, the input of the export round trips."""
    return torch.randint(0, 256, (count, 1, 28, 28), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_the_whole_test_split_and_write_json_and_png(trained_run, fashion_mnist_dir, tmp_path):
    result = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, out_dir=tmp_path, batch_size=777)
    assert result.count == 10_000
    assert 0.65 < result.top1 < result.top5 and result.top5 > 0.95  # 2 epochs on 3k images: about 71%

    confusion = np.array(result.confusion)
    assert confusion.shape == (10, 10) and confusion.sum() == 10_000
    assert confusion.sum(axis=1).tolist() == [1000] * 10  # the test split has 1,000 images of each class
    assert result.per_class["Trouser"] == confusion[1, 1] / 1000
    assert np.mean(list(result.per_class.values())) == pytest.approx(result.top1)  # balanced classes

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["top1"] == result.top1 and saved["confusion"] == result.confusion
    assert saved["settings"]["dataset"] == "fashion-mnist" and saved["settings"]["tta"] == "none"
    png = (tmp_path / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width, height = Image.open(tmp_path / "confusion.png").size
    assert width > 500 and height > 500


@pytest.mark.slow
def test_eval_of_a_trained_run_reproduces_the_trainers_test_accuracy(fashion_mnist_dir, tmp_path, capsys):
    # The `quick` recipe (bf16, normalised inputs) shrunk to seconds; the trainer scores the test split
    # after its last epoch, and `classicnets eval` must find the same number from the checkpoint alone.
    history = classicnets.train(recipe="quick", model_options={"width_mult": 0.0625}, epochs=2, subset=3000,
                                batch_size=100, out=str(tmp_path / "run"), data_dir=str(fashion_mnist_dir),
                                progress=False)
    capsys.readouterr()
    last = tmp_path / "run" / "last"
    assert main(["eval", str(last), "--bf16", "--json", "--out", str(tmp_path / "ev")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 10_000 and printed["settings"]["checkpoint"].endswith("last/model.safetensors")
    assert printed["top1"] > 0.5
    # bf16 on both sides; a different batch size may tip an image or two
    assert printed["top1"] == pytest.approx(history[-1]["test_acc"], abs=0.002)
    assert printed["top5"] == pytest.approx(history[-1]["test_top5"], abs=0.002)


def test_evaluate_matches_a_plain_loop(trained_run, fashion_test, fashion_mnist_dir):
    result = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, limit=1500, batch_size=400)

    images, labels = fashion_test[0][:1500], fashion_test[1][:1500]
    model = load_model(trained_run).model
    with torch.inference_mode():
        logits = model(prepare_batch(images, Preprocessing(1, 28, MEAN, STD)))
    predicted = logits.argmax(1).numpy()
    assert result.top1 == pytest.approx((predicted == labels.numpy()).mean(), abs=1e-6)
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean().item()
    assert result.top5 == pytest.approx(top5, abs=1e-6)
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (labels.numpy(), predicted), 1)
    assert result.confusion == confusion.tolist()


def test_tta_flip_and_ten_crop_keep_shapes_and_accuracy(trained_run, fashion_mnist_dir):
    plain = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, limit=1000)
    flip = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, limit=1000, tta="flip")
    crops = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, limit=1000, tta="ten-crop")
    for result in (flip, crops):
        assert result.count == 1000 and np.array(result.confusion).shape == (10, 10)
        assert result.top5 >= result.top1
    # Trained with mirrors, the net scores its mirror as well; the crops (4 px shifts at 28 px, which it
    # never saw) cost a little. Both stay close to the plain score.
    assert abs(flip.top1 - plain.top1) < 0.03
    assert crops.top1 > plain.top1 - 0.08 and crops.top1 > 0.6


def test_bf16_evaluation_agrees_with_float32(trained_run, fashion_mnist_dir):
    fp32 = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, limit=1000)
    bf16 = classicnets.evaluate(trained_run, data_dir=fashion_mnist_dir, limit=1000, bf16=True)
    assert bf16.settings["bf16"] and abs(bf16.top1 - fp32.top1) < 0.02


def test_eval_command_end_to_end(trained_run, fashion_mnist_dir, tmp_path, capsys):
    rc = main(["eval", str(trained_run), "--data-dir", str(fashion_mnist_dir), "--limit", "500",
               "--tta", "flip", "--out", str(tmp_path / "ev"), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 500 and printed["settings"]["tta"] == "flip"
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 20_000
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["top1"] == printed["top1"]

    # the default output directory is the run's, beside best/ and last/; tables name every class
    assert main(["eval", str(trained_run), "--data-dir", str(fashion_mnist_dir), "--limit", "300",
                 "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "Ankle boot" in out
    saved = json.loads((trained_run / "eval-train" / "metrics.json").read_text())
    assert saved["settings"]["split"] == "train" and saved["count"] == 300
    assert saved["top1"] > 0.65  # the first 300 training images were among the 3,000 it learned from


def test_eval_refuses_a_dataset_with_other_classes(trained_run, fashion_mnist_dir, tmp_path, capsys):
    renamed = tmp_path / "renamed.safetensors"
    state = load_model(trained_run).model.state_dict()
    save_file(state, str(renamed), metadata=_metadata(classes=[f"digit {i}" for i in range(10)]))
    assert main(["eval", str(renamed), "--data-dir", str(fashion_mnist_dir), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "digit 0" in err and "T-shirt/top" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ predict


def _clear_example(run: Path, fashion_test, label: int) -> np.ndarray:
    """Of the first 100 test images of a class, the one the net is surest of (the net is right on ~71%)."""
    images, labels = fashion_test
    candidates = images[labels == label][:100]
    with torch.inference_mode():
        logits = load_model(run).model(prepare_batch(candidates, Preprocessing(1, 28, MEAN, STD)))
    return candidates[int(logits.softmax(1)[:, label].argmax())][0].numpy()


def test_predict_grey_png_and_colour_jpeg_of_odd_sizes(trained_run, fashion_test, tmp_path, capsys):
    # A trouser as a 45x37 grey PNG, and a bag as a 91x67 colour JPEG: the bag scaled to 67x67, tinted
    # and padded with black on the left and right, which the centre crop removes again.
    trouser = Image.fromarray(_clear_example(trained_run, fashion_test, 1)).resize((45, 37), Image.BILINEAR)
    trouser.save(tmp_path / "trouser.png")
    bag = Image.fromarray(_clear_example(trained_run, fashion_test, 8)).resize((67, 67), Image.BILINEAR)
    bag = np.asarray(bag)
    colour = np.zeros((67, 91, 3), np.uint8)
    colour[:, 12:79] = (bag[..., None] * np.array([1.0, 0.9, 0.8])).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "bag.jpg", quality=90)

    predictions = classicnets.predict(trained_run, [tmp_path / "trouser.png", tmp_path / "bag.jpg"])
    assert [p.label for p in predictions] == ["Trouser", "Bag"]
    for prediction in predictions:
        probabilities = [p for _, p in prediction.top]
        assert len(prediction.top) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0.4 < probabilities[0] <= sum(probabilities) <= 1.0 + 1e-6
        assert len({name for name, _ in prediction.top}) == 5

    assert main(["predict", str(trained_run), str(tmp_path / "trouser.png"), str(tmp_path / "bag.jpg"),
                 "--json", "--top-k", "3", "--tta", "flip"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["top"][0]["class"] for p in printed] == ["Trouser", "Bag"]
    assert all(len(p["top"]) == 3 for p in printed)


def test_predict_reports_missing_and_broken_images(checkpoint_run, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(checkpoint_run), str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    assert main(["predict", str(checkpoint_run), str(tmp_path / "notes.png")]) == 2
    assert "not an image" in capsys.readouterr().err


@pytest.mark.parametrize("channels", [1, 3])
def test_predict_reads_a_16_bit_picture_as_its_8_bit_twin(tmp_path, channels):
    """predict decodes with the training folders' decode_image: a 16-bit grey PNG is no longer clipped to
    black and white (the same picture was a Bag at 16 bits and a Sneaker at 8)."""
    from classicnets.inference.predict import square_image

    picture = np.add.outer(np.arange(24) * 10, np.arange(32)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "8bit.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    eight = square_image(tmp_path / "8bit.png", channels, invert=False)
    assert torch.equal(square_image(tmp_path / "16bit.png", channels, invert=False), eight)
    assert torch.equal(square_image(Image.open(tmp_path / "16bit.png"), channels, invert=False), eight)
    assert torch.equal(eight[0], torch.from_numpy(picture[:, 4:28]))


def test_eval_and_predict_refuse_nan_weights_and_a_zero_std(trained_run, tmp_path, capsys):
    """They reported 10% top-1 and "nan%" with exit 0; now exit 2 naming the tensor or field."""
    from safetensors.torch import save_file

    from classicnets.checkpoint import load_model_weights

    state, metadata = load_model_weights(trained_run)
    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    first = next(iter(state))
    broken = [({**state, first: state[first] * float("nan")}, metadata, f"weight {first!r} holds"),
              (state, {**metadata, "std": json.dumps([0.0])}, "header field 'std' is [0.0]")]
    for weights, header, message in broken:
        save_file(weights, str(tmp_path / "bad.safetensors"), metadata=header)
        assert main(["eval", str(tmp_path / "bad.safetensors"), "--limit", "10"]) == 2
        assert message in capsys.readouterr().err
        assert main(["predict", str(tmp_path / "bad.safetensors"), str(tmp_path / "grey.png")]) == 2
        assert message in capsys.readouterr().err


def test_prepare_batch_converts_channels_like_pil():
    rgb = np.random.default_rng(0).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    grey = prepare_batch(torch.from_numpy(rgb), Preprocessing(1, 8, None, None))
    pil_grey = np.asarray(Image.fromarray(rgb[0].transpose(1, 2, 0)).convert("L"), np.float32) / 255
    assert grey.shape == (1, 1, 8, 8) and np.abs(grey[0, 0].numpy() - pil_grey).max() <= 1 / 255 + 1e-6
    grey_51 = torch.full((2, 1, 5, 5), 51, dtype=torch.uint8)
    to_rgb = prepare_batch(grey_51, Preprocessing(3, 7, (0.1,) * 3, (0.5,) * 3))
    assert to_rgb.shape == (2, 3, 7, 7) and torch.allclose(to_rgb, torch.full_like(to_rgb, (0.2 - 0.1) / 0.5))


# --------------------------------------------------------------------------------- unsafe and foreign


class _Payload:
    """Unpickling this creates ``marker``: the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_payload_checkpoints_never_execute(protocol, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _Payload(marker)}, protocol=protocol)
    pickle.loads(payload)  # the payload is live: loading it the unsafe way creates the marker
    assert marker.exists()
    marker.unlink()

    disguised = tmp_path / "run" / "best" / "model.safetensors"
    disguised.parent.mkdir(parents=True)
    disguised.write_bytes(payload)
    as_pt = tmp_path / "model.pt"
    as_pt.write_bytes(payload)
    zipped = tmp_path / "zipped" / "model.safetensors"
    zipped.parent.mkdir()
    torch.save({"w": _Payload(marker)}, zipped)  # torch.save's zip format under the safetensors name

    for path in (disguised.parent.parent, disguised, as_pt, zipped):
        with pytest.raises(CheckpointError):
            load_model(path)
        assert main(["predict", str(path), str(tmp_path / "any.png")]) == 2
        assert main(["export", str(path), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_header_length_that_starts_like_a_pickle_still_loads(checkpoint_run, tmp_path):
    # safetensors begins with its header length (8 bytes, little-endian): a length of 0x..80 puts the
    # pickle PROTO byte first, yet the file is a valid safetensors file and must load.
    state = load_model(checkpoint_run).model.state_dict()
    path = tmp_path / "model.safetensors"
    for pad in range(0, 256, 8):
        save_file(state, str(path), metadata={**_metadata(), "comment": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80 and path.read_bytes()[8:9] == b"{"
    assert load_model(path).metadata["model"] == MODEL


def test_checkpoint_of_another_model_is_refused(checkpoint_run, tmp_path):
    state = load_model(checkpoint_run).model.state_dict()
    relabelled = tmp_path / "relabelled.safetensors"
    save_file(state, str(relabelled), metadata=_metadata(model="alexnet_d2l"))
    mismatch = r"alexnet_d2l.*features\.conv1\.weight \(6, 1, 5, 5\) vs \(6, 1, 11, 11\)"
    with pytest.raises(CheckpointError, match=mismatch):
        load_model(relabelled)

    resnet = tmp_path / "resnet.safetensors"
    save_file(state, str(resnet), metadata=_metadata(model="resnet18", options={}))
    with pytest.raises(CheckpointError, match=r"do not fit model 'resnet18'.*missing.*unexpected"):
        load_model(resnet)

    wider = tmp_path / "wider.safetensors"
    save_file(state, str(wider), metadata=_metadata(options={"width_mult": 0.25}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(wider)

    unknown = tmp_path / "unknown.safetensors"
    save_file(state, str(unknown), metadata=_metadata(model="alexnet_29"))
    with pytest.raises(CheckpointError, match="alexnet_29.*cannot be built"):
        load_model(unknown)

    foreign = tmp_path / "foreign.safetensors"  # a safetensors file from another library: no header
    save_file(state, str(foreign))
    with pytest.raises(CheckpointError, match="not a classicnets checkpoint"):
        load_model(foreign)


# ------------------------------------------------------------------------------------------- export


def test_onnx_export_round_trip(checkpoint_run, tmp_path, capsys):
    import onnx
    import onnxruntime

    out = tmp_path / "tiny.onnx"
    assert main(["export", str(checkpoint_run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference" in printed and str(out) in printed

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classicnets.classes"]) == FASHION_CLASSES
    assert json.loads(props["classicnets.mean"]) == list(MEAN) and props["classicnets.model"] == MODEL

    x = prepare_batch(_images(64), Preprocessing(1, 28, MEAN, STD))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        reference = load_model(checkpoint_run).model(x).numpy()
    assert exported.shape == (64, 10) and np.abs(exported - reference).max() < 1e-4
    assert (exported.argmax(1) == reference.argmax(1)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_round_trip(checkpoint_run, tmp_path):
    result = classicnets.export(checkpoint_run, "torchscript")
    assert Path(result.path) == checkpoint_run / f"{MODEL}.torchscript.pt"  # beside best/ and last/
    assert result.max_abs_diff <= 1e-4 and result.bytes == Path(result.path).stat().st_size > 100_000

    extra = {"classicnets.json": ""}
    scripted = torch.jit.load(result.path, _extra_files=extra)
    assert json.loads(json.loads(extra["classicnets.json"])["classes"]) == FASHION_CLASSES
    x = prepare_batch(_images(50), Preprocessing(1, 28, MEAN, STD))
    with torch.inference_mode():
        assert torch.allclose(scripted(x), load_model(checkpoint_run).model(x), atol=1e-5)


def test_export_fails_above_tolerance(checkpoint_run, tmp_path):
    with pytest.raises(ExportVerificationError, match="differs from PyTorch by up to"):
        classicnets.export(checkpoint_run, "onnx", tmp_path / "m.onnx", tolerance=1e-12)


def test_export_without_onnxruntime_says_what_to_install(checkpoint_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match=r"onnxruntime.*pip install 'classicnets\[export\]'"):
        classicnets.export(checkpoint_run, "onnx", tmp_path / "m.onnx")
    assert main(["export", str(checkpoint_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "classicnets[export]" in capsys.readouterr().err


def test_bad_settings_are_clear_errors(checkpoint_run):
    with pytest.raises(ConfigError, match="unknown TTA mode 'five-crop'"):
        classicnets.evaluate(checkpoint_run, tta="five-crop")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        classicnets.export(checkpoint_run, "tflite")
    with pytest.raises(ClassicnetsError, match="no images given"):
        classicnets.predict(checkpoint_run, [])


# ----------------------------------------------------------------------------------- image-folder runs


def _fashion_folder(root: Path, fashion_mnist_dir: Path, classes=(0, 1, 7), train=120, val=60) -> Path:
    """Three Fashion-MNIST classes written out as PNG files in train/<class>/ and val/<class>/."""
    from classicnets.data import load_dataset

    for split, source, count in (("train", "train", train), ("val", "test", val)):
        data = load_dataset("fashion-mnist", source, data_dir=fashion_mnist_dir)
        images, labels = np.asarray(data.images), np.asarray(data.labels)
        for c in classes:
            folder = root / split / data.classes[c].replace("/", "-")
            folder.mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(labels == c)[:count]):
                Image.fromarray(images[index, 0]).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(fashion_mnist_dir, tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    root = _fashion_folder(tmp_path_factory.mktemp("folder"), fashion_mnist_dir)
    out = tmp_path_factory.mktemp("folder-run") / "run"
    history = classicnets.train(model="alexnet_28", model_options={"width_mult": 0.125}, dataset=str(root),
                                image_size=28, epochs=2, batch_size=30, lr=0.01, momentum=0.9,
                                precision="fp32", channels_last=False, num_workers=0, out=str(out),
                                progress=False)
    return root, out, history


def test_eval_of_an_image_folder_run_reproduces_the_trainers_test_accuracy(folder_run):
    root, out, history = folder_run
    result = classicnets.evaluate(out / "last", batch_size=45, channels_last=False)
    assert result.count == 180 and result.classes == ["Sneaker", "T-shirt-top", "Trouser"]
    assert result.top1 > 0.6  # three easy classes: it did learn
    assert result.top1 == pytest.approx(history[-1]["test_acc"], abs=1e-9)
    assert result.settings["dataset"] == str(root)


def test_eval_of_an_image_folder_run_with_ten_crops_and_a_moved_folder(folder_run, tmp_path, capsys):
    root, out, _ = folder_run
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert main(["eval", str(out), "--data-dir", str(moved), "--tta", "ten-crop", "--limit", "90",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 90 and printed["settings"]["tta"] == "ten-crop"
    shutil.rmtree(moved / "val" / "Sneaker")  # a class folder gone: the classes no longer match
    assert main(["eval", str(out), "--data-dir", str(moved)]) == 2
    err = capsys.readouterr().err
    assert "class folders" in err and "Traceback" not in err


def test_eval_of_an_image_folder_run_whose_folder_is_gone(folder_run, tmp_path, capsys):
    _, out, _ = folder_run
    weights = tmp_path / "run" / "last" / "model.safetensors"
    shutil.copytree(out / "last", weights.parent)
    with safe_open(weights, "pt") as f:
        metadata = {**f.metadata(), "dataset": str(tmp_path / "nowhere")}
    save_file(load_file(weights), weights, metadata=metadata)  # as if the folder had been moved away
    assert main(["eval", str(weights.parent)]) == 2
    err = capsys.readouterr().err
    assert "which is not there; pass --data-dir" in err and "Traceback" not in err


# ------------------------------------------------------------------------------- outputs onto inputs


def test_export_and_eval_refuse_to_write_onto_a_checkpoint(tmp_path, capsys):
    """`export --out RUN/last/model.safetensors` overwrote the checkpoint it read (and best/'s, a hard link
    to the same file)."""
    model = classicnets.create_model(MODEL, num_classes=10, in_channels=1, **OPTIONS)
    metadata = model_metadata(model=MODEL, model_options=OPTIONS, num_classes=10, in_channels=1,
                              classes=[str(i) for i in range(10)], image_size=28, mean=None, std=None,
                              dataset="fashion-mnist")
    run = tmp_path / "run"
    save_checkpoint(run, model_state=model.state_dict(), metadata=metadata, trainer_state={}, is_best=True)
    weights = (run / "last" / "model.safetensors").read_bytes()
    for source, out, why in ((run / "last", run / "last" / "model.safetensors", "the checkpoint being read"),
                             (run / "best", run / "last" / "model.safetensors", "the checkpoint being read"),
                             (run, run / "best" / "alexnet.pt", "is a checkpoint folder"),
                             (run, run / "last", "is a folder")):
        with pytest.raises(ConfigError, match=why):
            classicnets.export(source, "torchscript", out)
    with pytest.raises(ConfigError, match="evaluation results.*is a checkpoint folder"):
        classicnets.evaluate(run, out_dir=run / "last")
    out = str(run / "last" / "model.safetensors")
    assert main(["export", out, "--format", "torchscript", "--out", out]) == 2
    assert "the checkpoint being read" in capsys.readouterr().err
    assert (run / "last" / "model.safetensors").read_bytes() == weights
    assert (run / "best" / "model.safetensors").read_bytes() == weights


def test_tta_the_training_never_saw_warns_and_a_bright_photo_gets_a_note(trained_run, fashion_mnist_dir,
                                                                         tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_text(json.dumps({"augment": "none"}))
    with pytest.warns(TTAWarning, match="trained with augment='none'"):
        result = classicnets.evaluate(run, data_dir=fashion_mnist_dir, limit=100, tta="flip")
    assert Path(result.files["png"]).parent == run / "eval-test-flip"  # as the CLI writes: out="auto"
    assert classicnets.evaluate(run, data_dir=fashion_mnist_dir, limit=100, out=None).files == {}
    (run / "config.json").write_text(json.dumps({"augment": "flip"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAWarning)
        classicnets.evaluate(run, data_dir=fashion_mnist_dir, limit=100, tta="flip", out=None)

    photo = np.full((120, 160, 3), 235, np.uint8)  # a dark thing on a white table, as photos are
    photo[40:80, 50:110] = 30
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    (prediction,) = classicnets.predict(run, [tmp_path / "photo.jpg"])
    assert 0.0 <= prediction.entropy <= 1.0 and "brighter than the training images" in prediction.note
    assert "need --invert" in prediction.note
    assert "brighter" not in classicnets.predict(run, [tmp_path / "photo.jpg"], invert=True)[0].note
    assert main(["predict", str(run), str(tmp_path / "photo.jpg")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(tmp_path / "photo.jpg") and "entropy" in out and "note:" in out
    assert max(map(len, out.splitlines()[1:])) <= 80
