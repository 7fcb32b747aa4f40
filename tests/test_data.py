"""The data layer: real Fashion-MNIST, small files in the real formats for everything else, the download path
against a local HTTP server, and the loaders' determinism, sharding and augmentations, checked by numbers."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import itertools
import pickle
import tarfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from classicnets.data import (
    ArrayDataset,
    build_loaders,
    formats,
    load_dataset,
    make_synthetic,
    sources,
)
from classicnets.data import augment as aug
from classicnets.data.loaders import DeviceLoader, epoch_share
from classicnets.errors import ClassicnetsError, ConfigError, DatasetError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@pytest.fixture(autouse=True)
def _isolated_locations(monkeypatch, tmp_path):
    """No test reads or writes the user's real cache, or follows a data directory set in the environment."""
    monkeypatch.setenv(sources.ENV_CACHE, str(tmp_path / "user-cache"))
    monkeypatch.delenv(sources.ENV_DATA, raising=False)
    monkeypatch.delenv(sources.ENV_MIRROR, raising=False)


# --------------------------------------------------------------------------------- real Fashion-MNIST


def test_real_fashion_mnist_counts_classes_checksums_and_load_time(fashion_mnist_dir, tmp_path):
    started = time.perf_counter()
    train = load_dataset("fashion-mnist", "train", data_dir=fashion_mnist_dir, cache_dir=tmp_path)
    first = time.perf_counter() - started
    started = time.perf_counter()
    cached = load_dataset("fashion-mnist", "train", data_dir=fashion_mnist_dir, cache_dir=tmp_path)
    second = time.perf_counter() - started
    test = load_dataset("fashion-mnist", "test", data_dir=fashion_mnist_dir, cache_dir=tmp_path)

    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # the set is balanced
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes == FASHION_CLASSES and test.classes == FASHION_CLASSES
    assert torch.equal(cached.images, train.images) and torch.equal(cached.labels, train.labels)
    # first labels of the real files (train: Ankle boot, T-shirt, T-shirt, Dress; test: Ankle boot, Pullover)
    assert train.labels[:4].tolist() == [9, 0, 0, 3] and test.labels[:2].tolist() == [9, 2]
    mean, std = aug.channel_stats(train.images)
    assert mean[0] == pytest.approx(0.2860, abs=1e-4) and std[0] == pytest.approx(0.3530, abs=1e-4)
    # every file passes the published md5 of the .gz or the recorded sha256 of its content
    for split, names in FASHION_FILES.items():
        for spec, name in zip(sources.SPECS["fashion-mnist"].files[split], names, strict=True):
            raw = (fashion_mnist_dir / name).read_bytes()
            content = gzip.decompress(raw)
            assert hashlib.md5(raw).hexdigest() == spec.md5 or hashlib.sha256(content).hexdigest() == (
                spec.content_sha256
            )
        assert set((train if split == "train" else test).checksums) == set(names)
    assert first < 5.0, f"first load took {first:.2f} s"
    assert second < 1.0, f"cached load took {second:.2f} s"


def test_search_order_env_dir_then_debian(fashion_mnist_dir, tmp_path, monkeypatch):
    assert load_dataset("fashion-mnist", "test").source == str(fashion_mnist_dir)  # Debian's location
    env_dir = tmp_path / "datasets" / "fashion-mnist"
    env_dir.mkdir(parents=True)
    for name in FASHION_FILES["test"]:
        (env_dir / name).symlink_to(fashion_mnist_dir / name)
    monkeypatch.setenv(sources.ENV_DATA, str(tmp_path / "datasets"))
    assert load_dataset("FashionMNIST", "test").source == str(env_dir)


def test_real_fashion_mnist_loader_resizes_like_d2l(fashion_mnist_dir):
    loaders = build_loaders(
        "fashion-mnist", data_dir=fashion_mnist_dir, image_size=224, batch_size=128, normalize=False
    )
    assert (loaders.in_channels, loaders.num_classes, loaders.classes) == (1, 10, FASHION_CLASSES)
    assert len(loaders.train) == 60_000 // 128 and len(loaders.test) == -(-10_000 // 128)
    assert loaders.mean == (0.0,) and loaders.std == (1.0,)
    x, y = next(iter(loaders.test))
    images = load_dataset("fashion-mnist", "test", data_dir=fashion_mnist_dir).images[:128]
    expected = F.interpolate(images.float() / 255, size=224, mode="bilinear", align_corners=False)
    assert x.shape == (128, 1, 224, 224) and y.shape == (128,) and y.dtype == torch.int64
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------- IDX problems


def _write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, split: str = "train") -> None:
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    formats.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    formats.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _tiny_mnist(count=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), (np.arange(count) % 10).astype(np.uint8)


def test_idx_round_trip_gz_and_plain(tmp_path):
    images, labels = _tiny_mnist()
    for name in ("a.gz", "a"):
        formats.write_idx(tmp_path / name, images)
        assert np.array_equal(formats.read_idx(formats.read_bytes(tmp_path / name)), images)
    formats.write_idx(tmp_path / "f.gz", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert formats.read_idx(formats.read_bytes(tmp_path / "f.gz")).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_truncated_idx_names_the_file_and_sizes(tmp_path):
    images, _ = _tiny_mnist()
    formats.write_idx(tmp_path / "x", images)
    (tmp_path / "cut").write_bytes((tmp_path / "x").read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"cut is truncated.*\(6, 28, 28\).*4,604 bytes"):
        formats.read_idx(formats.read_bytes(tmp_path / "cut"), tmp_path / "cut")


def test_cut_gzip_and_wrong_magic(tmp_path):
    images, _ = _tiny_mnist()
    formats.write_idx(tmp_path / "x.gz", images)
    (tmp_path / "cut.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:200])
    with pytest.raises(DatasetError, match="damaged gzip"):
        formats.read_bytes(tmp_path / "cut.gz")
    with pytest.raises(DatasetError, match=r"not an IDX file.*0x3c68746d"):
        formats.read_idx(b"<html>404 Not Found</html>", "page")


def test_image_and_label_counts_must_agree(tmp_path):
    images, labels = _tiny_mnist(6)
    _write_mnist(tmp_path, images, labels[:5])
    with (
        pytest.warns(UserWarning, match="without checksum"),
        pytest.raises(DatasetError, match="6 images but 5 labels"),
    ):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)


def test_labels_out_of_range(tmp_path):
    images, labels = _tiny_mnist(6)
    labels[2] = 12
    _write_mnist(tmp_path, images, labels)
    with (
        pytest.warns(UserWarning, match="without checksum"),
        pytest.raises(DatasetError, match=r"labels must lie in 0..9, found 0..12"),
    ):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)


def test_checksum_mismatch_stops_and_verify_false_warns(tmp_path):
    images, labels = _tiny_mnist(6)
    _write_mnist(tmp_path, images, labels)
    with pytest.raises(DatasetError, match=r"fails its checksum: expected md5 f68b3c2d.*delete it"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    with pytest.warns(UserWarning, match="without checksum and count checks"):
        loaded = load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)
    assert loaded.images.shape == (6, 1, 28, 28) and np.array_equal(loaded.images[:, 0].numpy(), images)
    assert loaded.classes == [str(d) for d in range(10)]


def test_missing_dataset_lists_the_ways_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nothing", download=False)
    message = str(caught.value)
    for hint in ("--data-dir", sources.ENV_DATA, "apt-get install dataset-fashion-mnist", "download"):
        assert hint in message
    assert isinstance(caught.value, ClassicnetsError)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet21k'"):
        load_dataset("imagenet21k")
    with pytest.raises(ConfigError, match="unknown augment"):
        build_loaders("synthetic", image_size=28, batch_size=8, augment="mixup")


# ------------------------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A directory served on 127.0.0.1 by http.server in a thread, shut down after the test."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_default_download_address_is_canonical():
    assert sources.mirror_urls(sources.SPECS["fashion-mnist"].urls, None) == [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    ]
    assert sources.mirror_urls(sources.SPECS["cifar10"].urls, None) == ["https://www.cs.toronto.edu/~kriz/"]


def test_download_from_mirror_verifies_and_renames_into_place(fashion_mnist_dir, http_dir, tmp_path):
    served, url = http_dir
    for name in FASHION_FILES["test"]:
        (served / name).symlink_to(fashion_mnist_dir / name)
    target = tmp_path / "downloads"
    test = load_dataset("fashion-mnist", "test", data_dir=target, mirrors=[url], cache_dir=tmp_path / "c")
    assert len(test) == 10_000 and test.source == str(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(FASHION_FILES["test"])  # no .part left
    for name in FASHION_FILES["test"]:
        assert (target / name).read_bytes() == (fashion_mnist_dir / name).read_bytes()


def test_download_with_bad_checksum_leaves_nothing_behind(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    images, labels = _tiny_mnist()
    _write_mnist(served, images, labels, "test")  # valid IDX, but not the real files
    target = tmp_path / "downloads"
    monkeypatch.setenv(sources.ENV_MIRROR, url)  # the environment route to a mirror
    with pytest.raises(DatasetError, match=r"(?s)fails its checksum.*To get it: put t10k-images"):
        load_dataset("fashion-mnist", "test", data_dir=target)
    assert list(target.iterdir()) == []


def test_unreachable_address_is_reported(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)127\.0\.0\.1:9/t10k-images.*--data-dir"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "d", mirrors=["http://127.0.0.1:9/"])
    assert list((tmp_path / "d").iterdir()) == []


# ---------------------------------------------------------------------------------------------- CIFAR


def _cifar_pickle(content: dict) -> bytes:
    """Pickled like the real files: protocol 2, bytes keys, numpy arrays under the pre-2.0 module name."""
    data = pickle.dumps({k.encode(): v for k, v in content.items()}, protocol=2)
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _write_cifar(root: Path, variant: str = "cifar10", per_batch: int = 3, tarball: bool = False):
    """A tiny CIFAR in the real layout; returns the images and labels written, per split."""
    spec = sources.SPECS[variant]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    num_classes = 10 if variant == "cifar10" else 100
    for split, files in spec.files.items():
        parts = []
        for file in files:
            images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, num_classes, per_batch).tolist()
            (folder / file.name).write_bytes(
                _cifar_pickle({"batch_label": "tiny", "data": images, spec.label_key: labels})
            )
            parts.append((images.reshape(-1, 3, 32, 32), np.array(labels)))
        written[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    names = [f"class-{i}" for i in range(num_classes)]
    (folder / spec.meta.name).write_bytes(_cifar_pickle({spec.names_key: [n.encode() for n in names]}))
    if tarball:
        with tarfile.open(root / spec.archive.name, "w:gz") as tar:
            tar.add(folder, arcname=spec.folder)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return written, names


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
@pytest.mark.parametrize("tarball", [False, True], ids=["extracted", "tarball"])
def test_cifar_python_batches(tmp_path, variant, tarball):
    written, names = _write_cifar(tmp_path, variant, tarball=tarball)
    with pytest.warns(UserWarning, match="without checksum"):
        train = load_dataset(variant, "train", data_dir=tmp_path, download=False, verify=False)
        test = load_dataset(variant, "test", data_dir=tmp_path, download=False, verify=False)
    expected_train = 15 if variant == "cifar10" else 3
    assert train.images.shape == (expected_train, 3, 32, 32) and len(test) == 3
    # the rows are 1024 red, then 1024 green, then 1024 blue values, row-major
    assert np.array_equal(train.images.numpy(), written["train"][0])
    assert train.labels.tolist() == written["train"][1].tolist()
    assert train.classes == names


def test_cifar_checksums_are_checked(tmp_path):
    _write_cifar(tmp_path, "cifar10", tarball=True)
    with pytest.raises(DatasetError, match=r"cifar-10-python.tar.gz fails its checksum.*c58f3010"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(DatasetError, match=r"refusing to load builtins.print"):
        formats.read_cifar_batch(pickle.dumps({b"data": Exploit()}), "labels", "evil")


# --------------------------------------------------------------------------------------- image folders


def _image_folder(root: Path, per_class: int = 4, size=(40, 30)) -> dict[str, list[Path]]:
    """train/ and val/ with two classes; JPEG, PNG and WebP; RGB and grey images mixed."""
    rng = np.random.default_rng(0)
    made = {}
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., c] = 250  # a class colour the stats can see
                image = Image.fromarray(pixels)
                ext = ("jpg", "png", "webp")[i % 3]
                if i % 2:
                    image = image.convert("L")  # grey images mixed in
                path = folder / f"{i}.{ext}"
                image.save(path)
                made.setdefault(split, []).append(path)
    return made


def test_decode_converts_grey_and_rgb_alike(tmp_path):
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((8, 8, 4), 50, np.uint8), "RGBA").save(tmp_path / "rgba.webp", lossless=True)
    grey = formats.decode_image(tmp_path / "grey.png")
    assert grey.mode == "RGB" and np.asarray(grey).tolist()[0][0] == [77, 77, 77]
    assert formats.decode_image(tmp_path / "rgba.webp").mode == "RGB"


def _picture_in_8_and_16_bits(folder: Path) -> np.ndarray:
    """A grey gradient saved as 8-bit PNG, 16-bit PNG (Pillow mode I;16) and 16-bit PGM (mode I)."""
    picture = np.add.outer(np.arange(24) * 10, np.arange(32)).astype(np.uint8)
    Image.fromarray(picture).save(folder / "8bit.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(folder / "16bit.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(folder / "16bit.pgm")
    assert Image.open(folder / "16bit.png").mode == "I;16" and Image.open(folder / "16bit.pgm").mode == "I"
    return picture


def test_16_bit_grey_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """Pillow's convert clips 16-bit values at 255: the same picture was black and white at 16 bits."""
    picture = _picture_in_8_and_16_bits(tmp_path)
    for name in ("8bit.png", "16bit.png", "16bit.pgm"):
        for mode in ("RGB", "L"):
            decoded = np.asarray(formats.decode_image(tmp_path / name, mode=mode))
            assert np.array_equal(decoded if mode == "L" else decoded[..., 1], picture), (name, mode)
    from classicnets.data.loaders import FolderDataset  # the training folders decode the same way

    items = FolderDataset([tmp_path / "8bit.png", tmp_path / "16bit.png"], [0, 0], 16, None)
    assert torch.equal(items[0][0], items[1][0])


def test_decoding_applies_the_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert formats.decode_image(tmp_path / "phone.jpg").size == (20, 40)


def test_decompression_bomb_guard(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "bomb.png")  # 9 Mpixel, a few kB on disk
    assert (tmp_path / "bomb.png").stat().st_size < 50_000
    with pytest.raises(DatasetError, match=r"3000x3000 = 9,000,000 pixels, above the limit of 1,000,000"):
        formats.decode_image(tmp_path / "bomb.png", max_pixels=1_000_000)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1_000_000  # Pillow's own guard (>2x its limit) is reported the same way
    try:
        with pytest.raises(DatasetError, match="decompression bomb"):
            formats.decode_image(tmp_path / "bomb.png", max_pixels=None)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_empty_class_folder_and_missing_splits(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*empty holds no images"):
        formats.scan_image_folder(tmp_path / "train")
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(DatasetError, match=r"has no val/ or test/ sub-folder"):
        build_loaders("imagefolder", data_dir=tmp_path, image_size=16, batch_size=2)
    with pytest.raises(DatasetError, match=r"image folder .*nowhere does not exist"):
        build_loaders("imagefolder", data_dir=tmp_path / "nowhere", image_size=16, batch_size=2)


def test_image_folder_skips_and_counts_bad_files_or_stops(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("L", (3000, 3000)).save(tmp_path / "train" / "dog" / "huge.png")
    common = dict(data_dir=tmp_path, image_size=16, batch_size=2, num_workers=0, max_pixels=1_000_000)
    with pytest.warns(UserWarning, match="left out 1 file"):
        loaders = build_loaders("imagefolder", **common)
    assert loaders.classes == ["cat", "dog"] and loaders.in_channels == 3 and loaders.train_size == 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = sum(len(y) for _, y in loaders.train)
    assert seen == 8  # 10 listed, 2 unreadable skipped (drop_last never bites: 4 batches of 2)
    assert sorted(Path(p).name for p, _ in loaders.train.skipped) == ["broken.jpg", "huge.png"]
    assert any("skipped 2 unreadable image(s)" in str(w.message) for w in caught)
    with pytest.raises(DatasetError, match=r"notes.txt is not an image"):
        build_loaders("imagefolder", on_bad="error", **common)
    (tmp_path / "train" / "cat" / "notes.txt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stats sample skips the bad files; the epoch must stop
        strict = build_loaders("imagefolder", on_bad="error", **common)
    with pytest.raises(DatasetError, match=r"(broken.jpg is not an image|huge.png is 3000x3000)"):
        list(strict.train)


def test_image_folder_paper_pipeline_with_workers_and_two_ranks(tmp_path):
    made = _image_folder(tmp_path, per_class=6)
    seen = []
    for rank in (0, 1):
        loaders = build_loaders(
            str(tmp_path),  # a path is an image folder, as `--dataset PATH` passes it
            image_size=24, batch_size=3, augment="paper", num_workers=2,
            rank=rank, world_size=2, channels_last=True,
        )  # fmt: skip
        assert len(loaders.train) == 2  # 12 images / 2 ranks / batch 3
        for x, y in loaders.train:
            assert x.shape == (3, 3, 24, 24) and x.is_contiguous(memory_format=torch.channels_last)
            seen.append(y)
        test = [x for x, _ in loaders.test]
        assert sum(len(x) for x in test) == 6  # 12 val images, half on each rank, none repeated
        assert test[0].shape[1:] == (3, 24, 24)
        assert next(iter(loaders.test_uncropped))[0].shape[-2:] == (aug.pre_crop_size(24),) * 2
    assert len(torch.cat(seen)) == len(made["train"]) and loaders.dataset == str(tmp_path)
    # the class colour (red for cats, green for dogs) survives the pipeline into the normalised stats
    assert loaders.pca is not None and loaders.pca.eigenvalues.shape == (3,)
    assert loaders.mean[2] < loaders.mean[0] and loaders.mean[2] < loaders.mean[1]


# ------------------------------------------------------------------------------------ device loader


def _indexed_set(count=64, size=4) -> ArrayDataset:
    """Each image filled with its own index, so a batch tells which images it holds."""
    images = torch.arange(count, dtype=torch.uint8)[:, None, None, None].expand(count, 1, size, size)
    return ArrayDataset(images.clone(), torch.arange(count) % 4, ["a", "b", "c", "d"], "indexed")


def _ids(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] * 255).round().long()


def test_same_seed_same_batches_and_set_epoch_reshuffles():
    def batches(seed, epoch):
        pair = (make_synthetic("train", size=512), make_synthetic("test", size=64))
        loaders = build_loaders(pair, image_size=32, batch_size=64, augment="paper", seed=seed)
        loaders.train.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in itertools.islice(loaders.train, 3)]

    first, again = batches(0, 0), batches(0, 0)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(batches(0, 1)[0][1], first[0][1])  # another epoch, another order
    assert not torch.equal(batches(1, 0)[0][0], first[0][0])  # another seed, other batches


def test_epoch_advances_after_a_full_pass():
    pair = (_indexed_set(), _indexed_set())
    loaders = build_loaders(pair, image_size=4, batch_size=16, normalize=False)
    epoch0 = torch.cat([_ids(x) for x, _ in loaders.train])
    epoch1 = torch.cat([_ids(x) for x, _ in loaders.train])
    assert loaders.train.epoch == 2 and not torch.equal(epoch0, epoch1)
    assert sorted(epoch0.tolist()) == list(range(64)) == sorted(epoch1.tolist())


def test_two_ranks_get_disjoint_equal_shards_that_cover_the_epoch():
    pair = (_indexed_set(), _indexed_set(30))
    shards, tests = [], []
    for rank in (0, 1):
        loaders = build_loaders(pair, image_size=4, batch_size=8, normalize=False, rank=rank, world_size=2)
        loaders.train.set_epoch(3)
        shards.append(torch.cat([_ids(x) for x, _ in loaders.train]))
        tests.append(torch.cat([_ids(x) for x, _ in loaders.test]))
        assert len(loaders.train) == 4
    assert len(shards[0]) == len(shards[1]) == 32
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(64))
    assert sorted(torch.cat(tests).tolist()) == list(range(30))  # test: every image once, no padding
    with pytest.raises(ConfigError, match="rank must lie"):
        build_loaders(pair, image_size=4, batch_size=8, rank=2, world_size=2)


def test_each_seed_and_epoch_draws_its_own_order():
    """Seeded as DistributedSampler is (seed + epoch), the run with seed 1 would replay in its first epoch
    the order of seed 0's second: an experiment's seeds would share their data orders."""
    def order(seed, epoch):
        return epoch_share(1000, shuffle=True, seed=seed, epoch=epoch, rank=0, world_size=1).tolist()

    orders = [order(seed, epoch) for seed in range(3) for epoch in range(3)]
    assert all(sorted(o) == list(range(1000)) for o in orders)
    assert len({tuple(o) for o in orders}) == 9
    assert order(1, 0) == order(1, 0) != order(0, 1)


def test_dtype_channels_last_and_batch_counts():
    loaders = build_loaders(
        "synthetic", image_size=56, batch_size=100, eval_batch_size=200, dtype=torch.bfloat16,
        channels_last=True, augment="crop-flip",
    )  # fmt: skip
    assert len(loaders.train) == 2048 // 100 and len(loaders.test) == 3
    x, y = next(iter(loaders.train))
    assert x.dtype == torch.bfloat16 and y.dtype == torch.int64 and x.shape == (100, 1, 56, 56)
    assert x.is_contiguous(memory_format=torch.channels_last)
    sizes = [len(y) for _, y in loaders.test]
    assert sizes == [200, 200, 112]  # the last test batch is not dropped


def test_subset_is_class_balanced():
    loaders = build_loaders("synthetic", image_size=28, batch_size=10, subset=95)
    labels = torch.cat([y for _, y in loaders.train])
    assert loaders.train_size == 95 and len(labels) == 90  # drop_last of the last 5
    counts = torch.bincount(loaders.train.labels, minlength=10)
    assert counts.max() - counts.min() <= 1


def test_normalisation_uses_training_set_stats():
    train, test = make_synthetic("train", channels=3), make_synthetic("test", channels=3)
    loaders = build_loaders((train, test), image_size=28, batch_size=256)
    pixels = train.images.double() / 255
    assert loaders.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert loaders.std == pytest.approx(pixels.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-9)
    x = torch.cat([x for x, _ in loaders.train])  # 2048 = 8 full batches, the whole set
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


# ------------------------------------------------------------------------------------ augmentations


def test_flip_of_a_known_image():
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 1, 3, 4)
    batch = image.expand(1000, 1, 3, 4)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(
        aug.random_flip(image, gen, p=1.0)[0, 0, 0], torch.tensor([3, 2, 1, 0], dtype=torch.uint8)
    )
    out = aug.random_flip(batch, gen)
    flipped = (out == image.flip(-1)).flatten(1).all(1)
    kept = (out == image).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is either mirrored or untouched
    assert 0.45 < flipped.float().mean() < 0.55


@pytest.mark.parametrize("mode", ["flip", "resized-crop-flip"])
def test_flip_modes_mirror_about_half_the_batch(mode):
    image = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8)
    transform = aug.BatchTransform(image_size=16, augment=mode)
    out = transform(image.expand(400, 1, 8, 8), torch.Generator().manual_seed(0))
    if mode == "flip":
        resized = F.interpolate(image.float() / 255, size=16, mode="bilinear", align_corners=False)
        mirrored = (out - resized.flip(-1)).abs().flatten(1).amax(1) < 1e-5
        kept = (out - resized).abs().flatten(1).amax(1) < 1e-5
        assert bool((mirrored ^ kept).all()) and 0.4 < mirrored.float().mean() < 0.6
    else:  # the same boxes drawn again, without the flips: the mirrored half differs
        boxes = aug.random_boxes(400, torch.Generator().manual_seed(0))
        unflipped = aug.resample(image.float().expand(400, 1, 8, 8) / 255, *aug.box_matrices(boxes, 8, 8, 16))
        same = (out - unflipped).abs().flatten(1).amax(1) < 1e-5
        mirrored = (out - unflipped.flip(-1)).abs().flatten(1).amax(1) < 1e-5
        assert bool((same | mirrored).all()) and 0.4 < mirrored.float().mean() < 0.6


def test_crop_with_padding_stays_in_bounds_and_reaches_every_offset():
    images = torch.arange(1, 65, dtype=torch.uint8).reshape(1, 1, 8, 8).expand(2000, 1, 8, 8)
    out = aug.random_crop(images, 8, torch.Generator().manual_seed(0), padding=2)
    windows = F.pad(images[:1], (2, 2, 2, 2)).unfold(2, 8, 1).unfold(3, 8, 1)[0, 0]  # 5 x 5 x 8 x 8
    match = (out[:, 0, None, None] == windows[None]).flatten(3).all(3)  # B x 5 x 5
    assert bool((match.sum((1, 2)) == 1).all())  # every crop is exactly one in-bounds window
    assert bool(match.any(0).all())  # and all 25 offsets (0..4 in each direction) occur


def test_resized_crop_of_the_whole_image_is_a_resize():
    x = torch.rand(4, 3, 10, 12)
    out = aug.random_resized_crop(x, 20, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1))
    expected = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    small = aug.random_resized_crop(x, 6, torch.Generator().manual_seed(0), scale=(0.1, 0.3))
    assert small.shape == (4, 3, 6, 6)


def test_matmul_resampling_matches_interpolate_and_grid_sample():
    x = torch.rand(6, 3, 28, 28)
    rows = aug.resize_matrix(28, 224, x.device)
    expected = F.interpolate(x, size=224, mode="bilinear", align_corners=False)
    torch.testing.assert_close(aug.resample(x, rows, rows), expected, atol=1e-6, rtol=0)
    as_channels_last = aug.resample(x, rows, rows, channels_last=True)
    assert as_channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(as_channels_last, expected, atol=1e-6, rtol=0)
    boxes = aug.random_boxes(6, torch.Generator().manual_seed(3))
    crops = aug.resample(x, *aug.box_matrices(boxes, 28, 28, 40))
    reference = aug.random_resized_crop(x, 40, torch.Generator().manual_seed(3))
    torch.testing.assert_close(crops, reference, atol=1e-5, rtol=0)


def test_paper_crops_are_whole_pixel_windows_of_the_256_resize():
    """At 14 px from 8 px images: resize to 16 (14 * 256 / 224), then one of 3 x 3 crops, maybe mirrored."""
    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8).expand(400, 3, 8, 8)
    silent = aug.ColourPCA(torch.zeros(3), torch.eye(3))  # no colour change, to compare geometry only
    transform = aug.BatchTransform(image_size=14, augment="paper", pca=silent)
    out = transform(images, torch.Generator().manual_seed(0))
    resized = F.interpolate(images[:1].float() / 255, size=16, mode="bilinear", align_corners=False)[0]
    windows = [resized[:, t : t + 14, s : s + 14] for t in range(3) for s in range(3)]
    candidates = torch.stack(windows + [w.flip(-1) for w in windows])  # 18 x 3 x 14 x 14
    distance = (out[:, None] - candidates[None]).abs().flatten(2).amax(2)  # 400 x 18
    assert bool((distance.min(1).values < 1e-5).all())  # every view is exactly one window (or its mirror)
    assert bool((distance < 1e-5).any(0).all())  # and every window and mirror occurs


def test_colour_pca_recovers_covariance_and_jitters_along_eigenvectors():
    rng = np.random.default_rng(0)
    mixing = np.array([[0.20, 0.05, 0.0], [0.05, 0.15, 0.02], [0.0, 0.02, 0.05]])
    pixels = 0.5 + rng.standard_normal((200_000, 3)) @ mixing
    images = torch.from_numpy(np.clip(pixels * 255, 0, 255).round().astype(np.uint8).T.reshape(3, 200, 1000))
    pca = aug.colour_pca(images.unsqueeze(0).transpose(0, 1).reshape(1, 3, 200, 1000))
    covariance = np.cov(images.reshape(3, -1).numpy() / 255)
    expected = np.linalg.eigvalsh(covariance)
    assert pca.eigenvalues.numpy() == pytest.approx(expected, rel=1e-3)

    flat = torch.zeros(20_000, 3, 2, 2)
    shifted = aug.pca_colour(flat, pca, torch.Generator().manual_seed(0), std=0.1)
    assert torch.equal(shifted, shifted[:, :, :1, :1].expand_as(shifted))  # one shift per image
    shift = shifted[:, :, 0, 0]
    alphas = (shift @ pca.eigenvectors) / pca.eigenvalues  # back to alpha_i along each eigenvector p_i
    assert alphas.mean(0).abs().max() < 0.005
    assert alphas.std(0).numpy() == pytest.approx([0.1, 0.1, 0.1], rel=0.03)


def test_a_batch_larger_than_the_data_shrinks_to_it_and_says_so():
    """8 images, batch 16: one batch of 8 an epoch (dropping the only, partial batch trained nothing);
    over 2 ranks 4 each; over more ranks than images, a clear refusal."""
    data = _indexed_set(8)
    transform = aug.BatchTransform(image_size=4)
    with pytest.warns(UserWarning, match="only 8 training image.*fewer than the batch of 16.*one batch of 8"):
        loader = DeviceLoader(data.images, data.labels, batch_size=16, transform=transform)
    assert len(loader) == 1 and [len(y) for _, y in loader] == [8]
    for rank in (0, 1):
        with pytest.warns(UserWarning, match="only 4 training image.* per process"):
            shard = DeviceLoader(data.images, data.labels, batch_size=16, transform=transform, rank=rank,
                                 world_size=2)
        assert [len(y) for _, y in shard] == [4]
    with pytest.raises(ConfigError, match="8 training image.*cannot be shared by 16 processes"):
        DeviceLoader(data.images, data.labels, batch_size=1, transform=transform, rank=0, world_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough images for a batch: no warning, the partial one dropped
        assert [len(y) for _, y in DeviceLoader(data.images, data.labels, batch_size=3,
                                                transform=transform)] == [3, 3]


def test_an_image_folder_smaller_than_a_batch_trains_on_every_rank(tmp_path):
    _image_folder(tmp_path, per_class=3)  # 6 training images
    for rank, world_size in ((0, 1), (0, 2), (1, 2)):
        with pytest.warns(UserWarning, match="fewer than the batch of 16"):
            loaders = build_loaders(tmp_path, image_size=16, batch_size=16, num_workers=0, rank=rank,
                                    world_size=world_size)
        assert len(loaders.train) == 1 and [len(y) for _, y in loaders.train] == [6 // world_size]


def test_a_constant_training_channel_is_not_divided_by_zero():
    """std 0 (every pixel alike) made every normalised input NaN or infinite."""
    images = torch.full((8, 1, 4, 4), 77, dtype=torch.uint8)
    pair = tuple(ArrayDataset(images, torch.arange(8) % 2, ["a", "b"], "flat", split)
                 for split in ("train", "test"))
    with pytest.warns(UserWarning, match=r"channel\(s\) \[0\] of the array training images hardly vary"):
        loaders = build_loaders(pair, image_size=4, batch_size=4)
    assert loaders.std == (1 / 255,)
    assert all(torch.isfinite(x).all() for x, _ in loaders.train)


def test_a_class_none_of_whose_images_decode_is_an_error(tmp_path):
    """Training went on without the class (each epoch skipped its files with a warning)."""
    _image_folder(tmp_path)
    for path in (tmp_path / "train" / "dog").iterdir():
        path.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"none of the 4 image\(s\) of class 'dog' .*can be decoded"
                                           r".*dog/0.jpg.*remove its folder"):
        build_loaders(tmp_path, image_size=16, batch_size=2, num_workers=0)


def test_a_one_class_folder_is_an_error(tmp_path):
    _image_folder(tmp_path)
    for split in ("train", "val"):
        for path in (tmp_path / split / "dog").iterdir():
            path.unlink()
        (tmp_path / split / "dog").rmdir()
    with pytest.raises(DatasetError, match=r"1 class\(es\) \['cat'\]; a classifier needs at least two"):
        build_loaders(tmp_path, image_size=16, batch_size=2, num_workers=0)


def test_a_subset_larger_than_the_data_or_smaller_than_the_classes_is_said():
    with pytest.warns(UserWarning, match="subset=5,000 is larger than the 2,048 training images.*all 2,048"):
        loaders = build_loaders("synthetic", image_size=28, batch_size=64, subset=5000)
    assert loaders.train_size == 2048
    with pytest.warns(UserWarning, match="7 of the 10 classes have no training image.*--subset 3 is smaller"):
        build_loaders("synthetic", image_size=28, batch_size=2, subset=3)
    with pytest.raises(DatasetError, match="1 class.*or a larger --subset"):
        build_loaders("synthetic", image_size=28, batch_size=1, subset=1)
