"""`classicnets show` and `summary --plot`: the numbers behind each picture, on tiny models built here.

The kernel grid must hold the layer's weights, the colour score must be 0 for grey kernels and high for
single-channel ones, the neighbours must be the brute-force nearest, and the Grad-CAM must peak where a
synthetic image carries its class's evidence. Bad input must fail with a message that says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import classicnets
import classicnets.show as show
from classicnets.checkpoint import model_metadata, save_checkpoint
from classicnets.cli import main
from classicnets.errors import ConfigError
from classicnets.inference import ImageInputError
from classicnets.show.cam import grad_cam
from classicnets.show.common import block_ends, run_recording
from classicnets.show.kernels import colour_specificity, scaled_kernels, tower_count
from classicnets.show.neighbours import embedding, nearest

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)


class TwoTowers(nn.Module):
    """conv1 (3 -> 6 maps) read by a grouped conv2: maps 0-2 are tower 1's, 3-5 tower 2's."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 4, 3, groups=2)

    def forward(self, x):
        return self.conv2(self.conv1(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained alexnet_28 at 1/16 width saved as a Fashion-MNIST run: enough to read images through."""
    torch.manual_seed(0)
    model = classicnets.create_model("alexnet_28", num_classes=10, in_channels=1, width_mult=0.0625)
    metadata = model_metadata(model="alexnet_28", model_options={"width_mult": 0.0625}, num_classes=10,
                              in_channels=1, classes=CLASSES, image_size=28, mean=MEAN, std=STD,
                              dataset="fashion-mnist")
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, model_state=model.state_dict(), metadata=metadata, trainer_state={}, is_best=True)
    return run


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A colour photo as a PNG file (scikit-image's cat)."""
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


# ----------------------------------------------------------------------------------------------- kernels


def test_kernel_grid_holds_exactly_the_layers_weights_grouped_by_tower(tmp_path):
    model = TwoTowers()
    picture = show.kernels(model, out=tmp_path / "k.png")
    weight = model.conv1.weight.detach().double().numpy()  # (6, 3, 5, 5)
    assert picture.data["towers"] == [
        {"tower": 1, "kernels": [0, 2], "mean_colour_specificity": pytest.approx(
            np.mean(picture.data["colour_specificity"][:3]))},
        {"tower": 2, "kernels": [3, 5], "mean_colour_specificity": pytest.approx(
            np.mean(picture.data["colour_specificity"][3:]))},
    ]
    low, high = np.array(picture.data["kernel_min"]), np.array(picture.data["kernel_max"])
    for tower, first in (("tower1", 0), ("tower2", 3)):
        grid = picture.arrays[tower]
        assert grid.shape == (5, 3 * 6 - 1, 3)  # one row of three 5x5 RGB tiles, one-pixel gaps
        for j in range(3):
            tile = grid[:, j * 6:j * 6 + 5]  # (5, 5, RGB)
            i = first + j
            recovered = tile.transpose(2, 0, 1) * (high[i] - low[i]) + low[i]
            np.testing.assert_allclose(recovered, weight[i], rtol=0, atol=1e-6)
        assert np.all(grid[:, 5] == 1.0)  # the gap between tiles is white
    saved = json.loads((tmp_path / "k.json").read_text())
    assert saved["layer"] == "conv1" and saved["weight_shape"] == [6, 3, 5, 5]
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


def test_colour_specificity_is_zero_for_grey_kernels_and_high_for_pure_colour():
    pattern = torch.randn(4, 1, 7, 7)
    grey = pattern.expand(-1, 3, -1, -1)
    red = torch.cat([pattern, torch.zeros(4, 2, 7, 7)], dim=1)
    opponent = torch.cat([pattern, -pattern, torch.zeros(4, 1, 7, 7)], dim=1)
    torch.testing.assert_close(colour_specificity(grey), torch.zeros(4), atol=1e-7, rtol=0)
    torch.testing.assert_close(colour_specificity(red), torch.full((4,), 2 / 3))
    torch.testing.assert_close(colour_specificity(opponent), torch.ones(4))
    assert colour_specificity(torch.zeros(1, 3, 3, 3)).item() == 0.0
    random = colour_specificity(torch.randn(2000, 3, 5, 5))
    assert abs(random.mean().item() - 2 / 3) < 0.01  # independent channels: (C - 1) / C


def test_paper_alexnet_has_two_towers_and_the_d2l_net_one():
    paper = classicnets.create_model("alexnet", towers=2, width_mult=0.25)
    assert tower_count(paper, paper.features.conv1) == 2
    d2l = classicnets.create_model("alexnet_d2l", width_mult=0.25)
    assert tower_count(d2l, d2l.features.conv1) == 1
    picture = show.kernels(d2l, out=Path(pytest.importorskip("tempfile").mkdtemp()) / "k.png")
    assert picture.data["colour_specificity"] is None and "not applicable" in picture.data[
        "colour_specificity_note"]


def test_scaled_kernels_map_each_kernel_to_the_unit_range_on_its_own():
    weight = torch.stack([torch.full((3, 2, 2), 5.0), torch.arange(12.0).view(3, 2, 2) * 100])
    tiles, low, high = scaled_kernels(weight)
    assert tiles.shape == (2, 2, 2, 3) and low.tolist() == [5.0, 0.0] and high.tolist() == [5.0, 1100.0]
    assert tiles[1].min() == 0.0 and tiles[1].max() == 1.0


def test_a_model_without_a_conv_layer_is_refused(tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="no nn.Conv2d layer"):
        show.kernels(mlp, out=tmp_path / "k.png")
    image = torch.zeros(1, 2, 2)
    with pytest.raises(ConfigError, match="no conv block"):
        show.features(mlp, image, out=tmp_path / "f.png")
    pytest.importorskip("captum")
    with pytest.raises(ConfigError, match="no conv layer"):
        show.cam(mlp, image, out=tmp_path / "c.png")


# ---------------------------------------------------------------------------------------------- features


def test_default_layers_are_the_outputs_of_each_conv_block():
    alexnet = classicnets.create_model("alexnet_28", width_mult=0.0625).eval()
    ends = [c.name for c in block_ends(run_recording(alexnet, torch.zeros(1, 1, 28, 28)))]
    assert ends == ["features.pool1", "features.pool2", "features.relu3", "features.relu4", "features.pool5"]
    resnet = classicnets.create_model("resnet18", width_mult=0.125).eval()
    ends = [c.name for c in block_ends(run_recording(resnet, torch.zeros(1, 3, 32, 32)))]
    assert ends == ["maxpool", *(f"layer{s}.{b}" for s in range(1, 5) for b in range(2))]


def test_features_of_a_colour_photo_from_a_run(tiny_run, photo, tmp_path):
    picture = show.features(tiny_run, photo, out=tmp_path, layers=["features.relu1", "features.pool5"],
                            max_maps=3)
    assert picture.png == tmp_path / "features-chelsea.png" and picture.png.exists()
    rows = picture.data["layers"]
    assert [r["layer"] for r in rows] == ["features.relu1", "features.pool5"]
    assert rows[0]["shape"] == [6, 28, 28] and rows[1]["shape"] == [16, 5, 5]  # 96/16 and 256/16 maps
    maps = picture.arrays["features.relu1"]
    assert maps.shape == (3, 28, 28)
    means = maps.mean(axis=(1, 2))
    assert np.all(np.diff(means) <= 1e-6)  # the most active maps, in order
    assert picture.data["input_shape"] == [1, 28, 28]  # the colour photo read as predict reads it: grey


def test_an_unknown_layer_name_lists_the_valid_ones(tiny_run, photo, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown layer.*'features.conv9'.*features.conv1.*features.pool5"):
        show.features(tiny_run, photo, out=tmp_path, layers=["features.conv9"])


def test_an_unreadable_image_is_refused(tiny_run, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageInputError, match="not an image"):
        show.features(tiny_run, broken, out=tmp_path)
    assert main(["show", "cam", str(tiny_run), str(tmp_path / "missing.png")]) == 2


# --------------------------------------------------------------------------------------------------- CAM


class Evidence(nn.Module):
    """Class 0's evidence is brightness (map 0), class 1's darkness (map 1), summed over the image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.conv.weight.data = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        self.fc.weight.data = torch.eye(2)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_is_largest_where_the_class_evidence_lies():
    pytest.importorskip("captum")
    x = torch.zeros(1, 1, 16, 16)
    x[..., 1:5, 2:6] = 1.0  # bright: class 0
    x[..., 10:14, 9:13] = -1.0  # dark: class 1
    model = Evidence().eval()
    for target, (rows, cols) in ((0, (slice(1, 5), slice(2, 6))), (1, (slice(10, 14), slice(9, 13)))):
        coarse, upsampled, layer = grad_cam(model, x, target, layer="relu")
        assert layer == "relu" and coarse.shape == (16, 16)
        inside = upsampled[rows, cols]
        assert inside.min() > 0 and torch.isclose(inside.max(), upsampled.max())
        outside = upsampled.clone()
        outside[rows, cols] = 0
        assert outside.max() == 0  # no evidence for the class anywhere else


def test_cam_of_a_run_for_a_named_class_and_bad_classes(tiny_run, photo, tmp_path):
    pytest.importorskip("captum")
    picture = show.cam(tiny_run, photo, out=tmp_path / "cam.png", target="sneaker")
    data = picture.data
    assert data["class"] == "Sneaker" and data["class_index"] == 7
    assert data["layer"] == "features.relu5" and data["layer_map_shape"] == [12, 12]  # pool5 is 5x5
    assert picture.arrays["upsampled"].shape == (28, 28)
    assert sum(t["probability"] for t in data["top"]) <= 1.0 + 1e-6
    with pytest.raises(ConfigError, match="'Llama' is not one of the run's classes: T-shirt/top"):
        show.cam(tiny_run, photo, out=tmp_path, target="Llama")
    with pytest.raises(ConfigError, match="class index 10 is outside the run's 10 classes"):
        show.cam(tiny_run, photo, out=tmp_path, target=10)


# ---------------------------------------------------------------------------------------------- neighbours


def test_running_top_k_finds_the_brute_force_nearest():
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(53, 2, 3, 3, generator=generator)
    labels = torch.arange(53) % 7
    queries = torch.randn(4, 2, 3, 3, generator=generator)
    batches = list(zip(train.split(8), labels.split(8), strict=True))  # the top-k crosses batch bounds
    distances, indices, found_labels, images = nearest(lambda x: x.flatten(1), queries, batches, k=5)
    brute = torch.cdist(queries.flatten(1), train.flatten(1))
    expected_d, expected_i = brute.topk(5, dim=1, largest=False)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances, expected_d)
    assert torch.equal(found_labels, labels[expected_i])
    assert torch.equal(images, train[expected_i])


def test_embedding_is_the_input_of_the_last_linear_or_pooled_maps():
    alexnet = classicnets.create_model("alexnet_28", width_mult=0.0625).eval()
    embed, layer = embedding(alexnet)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        vector = embed(x)
        fc7 = alexnet.classifier[:5](torch.flatten(alexnet.forward_features(x), 1))  # fc6 ... relu7
    assert layer == ["input of classifier.fc8 (256-d)"]
    torch.testing.assert_close(vector, fc7)
    nin = classicnets.create_model("nin", width_mult=0.0625).eval()
    embed, layer = embedding(nin)
    with torch.no_grad():
        torch.testing.assert_close(embed(torch.randn(2, 1, 67, 67)).shape, torch.Size([2, 24]))
    assert layer == ["forward_features, averaged over positions"]


@pytest.mark.slow  # reads the whole Fashion-MNIST (about 20 s on two busy cores)
def test_neighbours_of_a_run_on_real_fashion_mnist(tiny_run, fashion_mnist_dir, tmp_path):
    picture = show.neighbours(tiny_run, out=tmp_path, k=3, queries=4, limit=300, data_dir=fashion_mnist_dir,
                              batch_size=64, device="cpu")
    rows = picture.data["queries"]
    assert [r["class"] for r in rows] == CLASSES[:4]  # the first test image of each class
    for row in rows:
        assert len(row["neighbours"]) == 3
        assert all(0 <= n["train_index"] < 300 for n in row["neighbours"])
        assert [n["distance"] for n in row["neighbours"]] == sorted(n["distance"] for n in row["neighbours"])
    assert picture.png.exists() and json.loads(picture.json.read_text())["k"] == 3


# ------------------------------------------------------------------------------------------- the CLI


def test_show_from_the_command_line(tiny_run, photo, tmp_path, capsys):
    pytest.importorskip("captum")
    assert main(["show", "kernels", str(tiny_run), "--out", str(tmp_path)]) == 0
    assert "colour specificity: n/a (grey input)" in capsys.readouterr().out
    assert main(["show", "features", str(tiny_run), str(photo), "--out", str(tmp_path),
                 "--layers", "features.relu1"]) == 0
    assert main(["show", "cam", str(tiny_run), str(photo), "--class", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Grad-CAM for 'Dress'" in out
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["cam-chelsea.png", "features-chelsea.png",
                                                              "kernels.png"]
    assert main(["show", "cam", str(tiny_run), str(photo), "--class", "Llama"]) == 2
    assert "is not one of the run's classes" in capsys.readouterr().err


def test_summary_plot(tmp_path, capsys):
    path = tmp_path / "alexnet.png"
    assert main(["summary", "alexnet_28", "--option", "width_mult=0.25", "--plot", str(path)]) == 0
    assert path.read_bytes()[:4] == b"\x89PNG" and Image.open(path).size[0] > 1000
    from classicnets.inspect.plot import plotted_rows

    summary = classicnets.summarize(classicnets.create_model("alexnet_28", width_mult=0.25))
    names = [r.name for r in plotted_rows(summary)]
    assert "features.conv2" in names and "features" not in names  # containers' empty rows drop out
    assert main(["summary", "alexnet", "vgg11", "--plot", str(path)]) == 2
    assert "--plot draws one model" in capsys.readouterr().err


def test_default_cam_layer_is_the_last_conv_output_before_pooling():
    from classicnets.show.common import last_conv_output

    for name, size, expected in (("alexnet", 227, "features.relu5"), ("resnet18", 64, "layer4.1"),
                                 ("googlenet", 64, "inception5b"), ("vgg11", 32, "features.19")):
        model = classicnets.create_model(name, width_mult=0.0625).eval()
        calls = run_recording(model, torch.zeros(1, 3, size, size))
        assert last_conv_output(calls).name == expected, name


def test_the_readme_pictures_exist_and_stay_small():
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    linked = [line.split("](")[1].split(")")[0] for line in text.splitlines() if "](docs/pictures/" in line]
    assert {Path(p).name for p in linked} >= {"kernels.png", "features.png", "cam.png", "neighbours.png",
                                              "summary.png"}
    for path in linked:
        assert (root / path).stat().st_size < 200_000, path
