"""A prepared image store: an image folder decoded once, the paper's way, into uint8 shards read at memory
speed.

Layout of a store made by ``classicnets prepare FOLDER --out STORE`` (``classicnets.data.prepare``)::

    STORE/store.json                 the manifest (below); its presence makes a folder a store
    STORE/train/00000.npy            uint8 (n, S, S, 3): images, shorter side to S, centre S x S (NHWC)
    STORE/train/00000.labels.npy     int64 (n,): their class indices
    STORE/val/...                    the same for the held-out split (the folder's val/ or test/)

Each shard is a plain ``.npy`` file, so ``np.load(path, mmap_mode="r")`` maps it without reading it: a batch
is a gather by index from the mapped pages straight into one (pinned) buffer, with no decoding and no
per-image Python. The manifest (JSON) names the format and its version, the image side, the classes, and per
split its shards (count, bytes, sha256) and the files that could not be decoded (skipped, with why).

Why not mosaicml-streaming, litdata or webdataset: they are built for streaming from object storage in
sequential chunks, each an extra dependency; what training here needs is random access by index on a local
disk (the device-side batch pipeline draws any index of a seeded permutation), which a memory map gives for
free, and the shards stay readable with numpy alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

MANIFEST = "store.json"
FORMAT = "classicnets-image-store"
VERSION = 1  # bump when a reader of the old version would misread the new layout
SPLITS = ("train", "val")


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a store manifest."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: Path) -> dict:
    """The manifest, checked for its format and version (not for completeness: see :func:`open_store`)."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(
            f"{root} is not a prepared store (no {MANIFEST}); make one with `classicnets prepare FOLDER "
            f"--out {root}`"
        ) from None
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"{path} cannot be read as a store manifest ({error}); the store is damaged: delete it and run "
            "`classicnets prepare` again"
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a classicnets image-store manifest (format {FORMAT!r} expected)")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise DatasetError(
            f"{root} is a store of format version {version}, newer than this classicnets reads (version "
            f"{VERSION}); upgrade classicnets, or prepare the store again with this one"
        )
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    """Write atomically (temporary file, then rename): a killed writer leaves the old manifest or the new."""
    path = Path(root) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)


@dataclass
class StoreSplit:
    """One split of a store, memory-mapped: ``shards`` are uint8 (n, S, S, 3) arrays over the mapped pages,
    ``labels`` int64 (N,) for the whole split, ``starts[i]`` the global index of shard i's first image."""

    root: Path
    name: str
    shards: list[np.ndarray]
    labels: torch.Tensor
    starts: np.ndarray
    classes: list[str]
    image_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, index within that shard) of each global index."""
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        return shard, indices - self.starts[shard]

    def gather(self, indices: np.ndarray, out: torch.Tensor) -> np.ndarray:
        """Copy the images at ``indices`` into ``out[:len(indices)]`` (uint8 (B, S, S, 3)), grouped by shard:
        one ``np.take`` per shard the batch touches, straight from the mapped pages into ``out`` (numpy
        copies without the GIL; torch's index_select copies uint8 rows element by element, 50x slower).
        Returns the order the images were placed in (``indices[order]``)."""
        shard, local = self.locate(np.asarray(indices, dtype=np.int64))
        order = np.argsort(shard, kind="stable")
        shard, local = shard[order], local[order]
        target = out.numpy()
        bounds = np.flatnonzero(np.diff(shard)) + 1
        for begin, end in zip(np.r_[0, bounds], np.r_[bounds, len(shard)], strict=True):
            np.take(self.shards[shard[begin]], local[begin:end], axis=0, out=target[begin:end])
        return order


def open_store(root: str | Path, split: str, *, verify: bool = False) -> StoreSplit:
    """Map one split (``"train"``, or ``"val"``/``"test"`` for the held-out one) of a complete store.

    Every shard's size and header are checked against the manifest (a truncated copy stops here, not in the
    middle of an epoch); ``verify`` also checks each shard's sha256 (reads every byte)."""
    root = Path(root)
    manifest = read_manifest(root)
    if not manifest.get("complete"):
        done = sum(len(s.get("shards", [])) for s in manifest.get("splits", {}).values())
        raise DatasetError(
            f"store {root} is incomplete ({done} shard(s) written); its `classicnets prepare` was stopped. "
            f"Run the same command again to finish it (finished shards are kept)"
        )
    name = "val" if split in ("test", "val") else split
    if name not in manifest["splits"]:
        raise DatasetError(f"store {root} has no {split!r} split; it has {', '.join(manifest['splits'])}")
    entry = manifest["splits"][name]
    size = int(manifest["image_size"])
    shards, labels = [], []
    for shard in (s for s in entry["shards"] if s["count"]):  # a shard of only unreadable files is empty
        shards.append(_map_shard(root, shard, size, verify))
        labels.append(_load_labels(root, shard, len(manifest["classes"])))
    if not shards:
        raise DatasetError(f"store {root}: its {name} split holds no images")
    counts = np.array([len(s) for s in shards], dtype=np.int64)
    return StoreSplit(root, name, shards, torch.from_numpy(np.concatenate(labels)),
                      np.r_[0, np.cumsum(counts)[:-1]], list(manifest["classes"]), size)  # fmt: skip


def _map_shard(root: Path, shard: dict, size: int, verify: bool) -> np.ndarray:
    path = root / shard["images"]
    if not path.is_file():
        raise DatasetError(f"store {root} lacks its shard {shard['images']}; copy the store again in full")
    found = path.stat().st_size
    if found != shard["bytes"]:
        what = "truncated" if found < shard["bytes"] else "longer than the manifest says"
        raise DatasetError(
            f"store shard {path} is {what}: {found:,} bytes, the manifest records {shard['bytes']:,}. "
            "The copy was cut short or the file was changed: copy the store again, or run "
            "`classicnets prepare` again into a new folder"
        )
    if verify:
        import hashlib

        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != shard["sha256"]:
            raise DatasetError(f"store shard {path} fails its sha256 check; the file is damaged")
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DatasetError(f"store shard {path} is not a readable .npy file ({error})") from error
    if images.dtype != np.uint8 or images.shape != (shard["count"], size, size, 3):
        raise DatasetError(
            f"store shard {path} holds {images.dtype} {images.shape}, the manifest says uint8 "
            f"({shard['count']}, {size}, {size}, 3)"
        )
    return images


def _load_labels(root: Path, shard: dict, num_classes: int) -> np.ndarray:
    path = root / shard["labels"]
    try:
        labels = np.load(path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"store labels {path} cannot be read ({error}); copy the store again") from error
    in_range = not len(labels) or 0 <= labels.min() <= labels.max() < num_classes
    if labels.shape != (shard["count"],) or not in_range:
        raise DatasetError(f"store labels {path} do not match the manifest ({shard['count']} labels in "
                           f"0..{num_classes - 1} expected)")
    return labels.astype(np.int64, copy=False)
