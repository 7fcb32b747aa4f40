"""The prepared image store: it holds exactly what the folder path decodes, resumes, reports bad input, and
trains end to end; the loader splits an epoch across ranks in the order every loader uses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from classicnets.cli import main
from classicnets.data import build_loaders, formats, open_store, prepare
from classicnets.data.loaders import FolderDataset, StoreLoader, epoch_share
from classicnets.data.samples import sample_photo_folder
from classicnets.data.store import MANIFEST
from classicnets.errors import DatasetError

pytest.importorskip("skimage")
SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real JPEGs of three photos, 8 + 4 per class, at 160x120 (small, so the tests stay fast)."""
    root = tmp_path_factory.mktemp("photos")
    return sample_photo_folder(root, classes=3, train_per_class=8, val_per_class=4, size=(160, 120))


def _quiet(folder, out, **options) -> dict:
    return prepare(folder, out, progress=False, **options)


def test_store_holds_the_folder_paths_decoded_images_bit_for_bit(photos, tmp_path):
    manifest = _quiet(photos, tmp_path / "store", size=256, shard_size=5, workers=2)  # 24 images: 5 shards
    assert manifest["complete"] and len(manifest["splits"]["train"]["shards"]) == 5
    for split, folder in (("train", "train"), ("val", "val")):
        scan = formats.scan_image_folder(photos / folder)
        data = open_store(tmp_path / "store", split, verify=True)
        assert data.classes == scan.classes == ["astronaut", "chelsea", "coffee"]
        decoded = FolderDataset(scan.paths, scan.labels, 256, formats.DEFAULT_MAX_PIXELS)
        stored = torch.empty((len(scan), 256, 256, 3), dtype=torch.uint8)
        order = data.gather(np.arange(len(scan)), stored)
        assert (order == np.arange(len(scan))).all()  # in order: the shards are in the scan's order
        for i in range(len(scan)):
            image, label, failure = decoded[i]
            assert failure is None and torch.equal(stored[i], image) and int(data.labels[i]) == label


def test_store_batches_equal_the_folder_loaders_on_two_ranks(photos, tmp_path):
    """Same seed, same ranks: the store (one shard) gives the folder loader's batches, bit for bit."""
    _quiet(photos, tmp_path / "store", size=128, workers=0)  # the folder path decodes at 128 for 112
    for rank in (0, 1):
        options = dict(image_size=112, batch_size=4, augment="crop-flip", normalize=False, seed=3,
                       rank=rank, world_size=2)  # fmt: skip
        folder = build_loaders(str(photos), num_workers=0, **options)
        store = build_loaders(str(tmp_path / "store"), **options)
        assert isinstance(store.train, StoreLoader) and len(store.train) == len(folder.train) == 3
        assert store.classes == folder.classes and store.train_size == folder.train_size == 24
        for epoch in (0, 1):
            for (xs, ys), (xf, yf) in zip(store.train, folder.train, strict=True):
                assert torch.equal(ys, yf) and torch.equal(xs, xf)
            assert store.train.epoch == folder.train.epoch == epoch + 1
        test = [(x, y) for x, y in store.test]
        assert sum(len(y) for _, y in test) == 6  # 12 val images, half on each rank
        for (xs, ys), (xf, yf) in zip(test, folder.test, strict=True):
            assert torch.equal(ys, yf) and torch.equal(xs, xf)
        assert next(iter(store.test_uncropped))[0].shape[-2:] == (128, 128)


def test_two_ranks_split_each_epoch_of_the_one_process_order():
    """Rank r of 2 visits every other item of what one process visits (cut to an even count), so the
    ranks' shares are disjoint and equal; a subset's store indices follow the same positions."""
    split = type("Split", (), {"__len__": lambda self: 103, "image_size": 8})()
    seen = []
    for rank in (0, 1):
        loader = StoreLoader(split, batch_size=8, transform=None, seed=5, rank=rank, world_size=2)
        for epoch in (0, 4):
            alone = epoch_share(103, shuffle=True, seed=5, epoch=epoch, rank=0, world_size=1)
            assert loader.epoch_indices(epoch).tolist() == alone[:102][rank::2].tolist()
        assert len(loader) == 51 // 8 and loader.num_samples == 51
        seen.append(loader.epoch_indices(0))
        test = StoreLoader(split, batch_size=8, transform=None, shuffle=False, rank=rank, world_size=2)
        assert test.epoch_indices(0).tolist() == list(range(rank, 103, 2))
    assert not set(seen[0]) & set(seen[1])  # disjoint, equal shares of one permutation
    subset = np.arange(200, 303)
    picked = StoreLoader(split, batch_size=8, transform=None, seed=5, indices=subset)
    assert picked.epoch_indices(2).tolist() == (200 + epoch_share(103, shuffle=True, seed=5, epoch=2, rank=0,
                                                                  world_size=1)).tolist()  # fmt: skip


def test_a_stopped_prepare_resumes_and_keeps_finished_shards(photos, tmp_path):
    out = tmp_path / "store"
    first = _quiet(photos, out, size=32, shard_size=4, max_shards=2, workers=0)
    assert not first["complete"] and len(first["splits"]["train"]["shards"]) == 2
    with pytest.raises(DatasetError, match="incomplete .* Run the same command again"):
        open_store(out, "train")
    kept = {p: p.stat().st_mtime_ns for p in (out / "train").glob("*.npy")}
    assert len(kept) == 4  # two shards: images and labels
    again = _quiet(photos, out, size=32, shard_size=4, workers=0)
    assert again["complete"] and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    fresh = _quiet(photos, tmp_path / "fresh", size=32, shard_size=4, workers=0)
    digests = [[s["sha256"] for s in m["splits"]["train"]["shards"]] for m in (again, fresh)]
    assert digests[0] == digests[1] and len(digests[0]) == 6
    with pytest.raises(DatasetError, match="image_size"):  # resuming with other settings is refused
        _quiet(photos, out, size=64, shard_size=4, workers=0)


@pytest.mark.slow
def test_a_killed_prepare_resumes(photos, tmp_path):
    """SIGKILL between shards (no chance to clean up), then the same command again."""
    out = tmp_path / "store"
    command = [sys.executable, "-m", "classicnets", "prepare", str(photos), "--out", str(out), "--size", "64",
               "--shard-size", "1", "--workers", "0", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST).exists():
            manifest = json.loads((out / MANIFEST).read_text())
            if len(manifest["splits"]["train"]["shards"]) >= 3:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = json.loads((out / MANIFEST).read_text())
    done = len(interrupted["splits"]["train"]["shards"])
    assert not interrupted["complete"] and 3 <= done < 24
    assert subprocess.run(command, env=env).returncode == 0
    resumed = open_store(out, "train", verify=True)
    assert len(resumed) == 24 and len(open_store(out, "val")) == 12
    assert not list(out.rglob("*.partial*"))  # the killed run's half-written shard was rewritten


def test_an_unreadable_image_is_reported_skipped_and_listed(photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "train" / "chelsea" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    manifest = prepare(folder, tmp_path / "store", size=32, shard_size=10, workers=0)
    single = _quiet(folder, tmp_path / "single", size=32, shard_size=1, workers=0)  # a shard of it alone
    assert [s["count"] for s in single["splits"]["train"]["shards"]].count(0) == 1
    assert len(open_store(tmp_path / "single", "train", verify=True)) == 24
    skipped = [s for shard in manifest["splits"]["train"]["shards"] for s in shard["skipped"]]
    assert [s["file"] for s in skipped] == ["train/chelsea/broken.jpg"]
    assert "is not an image Pillow can read" in skipped[0]["why"]
    assert "broken.jpg" in capsys.readouterr().err
    data = open_store(tmp_path / "store", "train")
    assert len(data) == 24 and torch.bincount(data.labels).tolist() == [8, 8, 8]


def test_damaged_or_newer_stores_are_refused_with_a_clear_error(photos, tmp_path):
    out = tmp_path / "store"
    _quiet(photos, out, size=32, workers=0)
    manifest = json.loads((out / MANIFEST).read_text())
    shard = out / manifest["splits"]["train"]["shards"][0]["images"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"00000.npy is truncated: .* bytes, the manifest records"):
        build_loaders(str(out), image_size=28, batch_size=4)
    shard.write_bytes(data)
    manifest["version"] = 99
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="format version 99, newer than this classicnets reads"):
        open_store(out, "train")


def test_folders_without_images_or_a_busy_out_are_refused(photos, tmp_path):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        prepare(tmp_path / "empty", tmp_path / "store")
    with pytest.raises(DatasetError, match="missing does not exist"):
        prepare(tmp_path / "missing", tmp_path / "store")
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no train/ sub-folder"):
        prepare(tmp_path / "flat", tmp_path / "store")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists and is not a store"):
        prepare(photos, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_prepare_then_train_and_evaluate_from_the_cli(photos, tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["prepare", str(photos), "--out", str(store), "--size", "32", "--workers", "2"]) == 0
    assert "train: 24 images in 1 shard(s)" in capsys.readouterr().err
    code = main(["train", "--model", "alexnet_28", "--model-options", "width_mult=0.125",
                 "--dataset", str(store), "--image-size", "28", "--epochs", "1", "--batch-size", "8",
                 "--augment", "paper",
                 "--normalize", "--tta", "ten-crop", "--optimizer", "adamw", "--lr", "0.002",
                 "--out", str(run), "--no-progress"])  # fmt: skip
    assert code == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert json.loads((run / "config.json").read_text())["dataset"] == str(store)
    assert main(["eval", str(run)]) == 0
    assert "chelsea" in capsys.readouterr().out


def test_crops_of_decoded_bytes_take_the_row_gather_and_match_the_general_path():
    """Decoded batches are NHWC bytes seen as NCHW: their crops gather whole rows; the result (and the
    random draws) are those of the per-pixel gather on a contiguous copy, flips included."""
    from classicnets.data import augment as aug

    nhwc = torch.randint(0, 256, (6, 20, 24, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    nchw = nhwc.contiguous()
    fused = aug.random_crop_flip(nhwc, 16, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    plain = aug.random_flip(aug.random_crop(nchw, 16, generator), generator)
    assert torch.equal(fused, plain)
    top, left = torch.tensor([0, 4, 1, 2, 3, 4]), torch.tensor([8, 0, 5, 1, 2, 3])
    assert torch.equal(aug._crop_at(nhwc, top, left, 16), aug._crop_at(nchw, top, left, 16))
    assert torch.equal(aug._crop_at(nhwc, top, left, 16)[1], nchw[1, :, 4:20, 0:16])


def test_interleaved_passes_over_one_store_loader_do_not_share_buffers(photos, tmp_path):
    _quiet(photos, tmp_path / "store", size=32, shard_size=7, workers=0)
    loaders = build_loaders(str(tmp_path / "store"), image_size=28, batch_size=4, normalize=False)
    reference = [list(loaders.train) for _ in range(2)]  # epochs 0 and 1
    loaders.train.set_epoch(0)
    first = iter(loaders.train)
    head = [next(first)]  # epoch 0 is open, its next batches being gathered...
    loaders.train.set_epoch(1)
    other = list(loaders.train)  # ...while a pass over epoch 1 runs
    for seen, expected in ((head + list(first), reference[0]), (other, reference[1])):
        for (x, y), (xr, yr) in zip(seen, expected, strict=True):
            assert torch.equal(x, xr) and torch.equal(y, yr)


def test_load_dataset_reads_a_store_split_into_memory(photos, tmp_path):
    from classicnets.data import load_dataset

    _quiet(photos, tmp_path / "store", size=32, shard_size=5, workers=0)
    val = load_dataset(str(tmp_path / "store"), "test")  # the held-out split, as for named sets
    data = open_store(tmp_path / "store", "val")
    assert val.images.shape == (12, 3, 32, 32) and val.classes == data.classes
    assert torch.equal(val.images[7], torch.from_numpy(data.shards[1][2].copy()).permute(2, 0, 1))
    assert torch.equal(val.labels, data.labels)
