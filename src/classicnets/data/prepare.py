"""``classicnets.prepare(FOLDER, OUT)``: decode an image folder once into a store (see ``store.py``).

Every image goes through :func:`formats.decode_square` (the streaming folder loader's own decode), so the
store holds bit for bit what the folder path would decode at the same size. Work is split into chunks of
images; worker processes decode a chunk and write it straight into its shard's temporary ``.npy`` (memory
mapped, so no pixels travel between processes). A shard whose chunks are all done is compacted (when an
image could not be decoded), hashed, and renamed into place, and only then listed in the manifest: a killed
``prepare`` keeps every listed shard and, run again, writes the rest.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from . import formats, store

DEFAULT_SIZE = 256  # the paper's: shorter side to 256, centre 256 x 256
DEFAULT_SHARD_SIZE = 4096  # images: 0.8 GB at 256 x 256 x 3, about 313 shards for ImageNet's 1.28M
CHUNK = 64  # images per worker task
OPEN_SHARDS = 2  # shards being written at once: enough chunks to keep every worker busy


@dataclass
class _Shard:
    """A shard being written: its images (paths, labels), the chunks still out, the failures so far."""

    split: str
    index: int
    paths: list[Path]
    labels: np.ndarray
    tmp: Path
    outstanding: int = 0
    ok: np.ndarray = field(default=None)  # type: ignore[assignment]
    failures: list[tuple[str, str]] = field(default_factory=list)


def prepare(
    folder: str | Path,
    out: str | Path,
    *,
    size: int = DEFAULT_SIZE,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int | None = formats.DEFAULT_MAX_PIXELS,
    max_shards: int | None = None,
    progress: bool = True,
) -> dict:
    """Decode ``folder`` (``train/<class>/*`` and ``val/<class>/*`` or ``test/``) into a store at ``out``.

    ``workers``: decoding processes (default: one per CPU; 0 decodes in this process). ``max_shards``: write
    at most this many shards in this call, then return (a later call continues; for time-boxed jobs).
    Run again on the same ``out`` after an interruption: finished shards are kept. Returns the manifest.
    Unreadable images are skipped, reported, and listed in the manifest under their split's ``skipped``.
    """
    folder, out = Path(folder), Path(out)
    if size < 8 or shard_size < 1:
        raise ConfigError(f"size must be at least 8 and shard_size at least 1, found {size} and {shard_size}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 0:
        raise ConfigError(f"workers must be 0 (decode in this process) or more, found {workers}")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"image folder {folder} {what}; expected {folder}/train/<class>/<images> "
                           f"and {folder}/val/<class>/<images> (or test/)")
    scans = dict(zip(store.SPLITS, formats.scan_splits(folder), strict=True))
    manifest = _begin(folder, out, scans, size, shard_size)
    if manifest["complete"]:
        _say(f"{out} is already a complete store of {folder}; nothing to do", progress)
        return manifest
    plan = [
        _Shard(split, i, scan.paths[start:start + shard_size],
               np.asarray(scan.labels[start:start + shard_size], dtype=np.int64),
               out / split / f".{i:05d}.npy.partial")
        for split, scan in scans.items()
        for i, start in enumerate(range(0, len(scan), shard_size))
        if i not in {s["index"] for s in manifest["splits"][split]["shards"]}
    ]  # fmt: skip
    if max_shards is not None:
        plan = plan[:max_shards]
    total = sum(len(s.paths) for s in plan)
    _say(f"preparing {folder} -> {out}: {total:,} images to decode at {size}x{size} in {len(plan)} shard(s) "
         f"with {workers or 'no'} worker process(es)", progress)
    with _executor(workers) as pool, _Progress(total, progress) as bar:
        _run(pool, plan, manifest, out, size, max_pixels, bar)
    written = {split: sum(1 for _ in range(0, len(scan), shard_size)) for split, scan in scans.items()}
    manifest["complete"] = all(len(manifest["splits"][s]["shards"]) == n for s, n in written.items())
    for split in store.SPLITS:
        entry = manifest["splits"][split]
        if manifest["complete"] and not sum(s["count"] for s in entry["shards"]):
            raise DatasetError(f"none of the images in {folder}/{entry['folder']} could be decoded; see the "
                               f"skipped files in {out / store.MANIFEST}")
    store.write_manifest(out, manifest)
    _report(manifest, out, progress)
    return manifest


def _begin(folder: Path, out: Path, scans: dict, size: int, shard_size: int) -> dict:
    """A new manifest, or the existing one of an interrupted run on the same folder with the same settings."""
    fingerprints = {split: _fingerprint(scan) for split, scan in scans.items()}
    if store.is_store(out):
        manifest = store.read_manifest(out)
        asked = {"image_size": size, "shard_size": shard_size, "classes": scans["train"].classes}
        differs = [k for k, v in asked.items() if manifest.get(k) != v]
        differs += [f"the files in {s}/" for s, f in fingerprints.items()
                    if manifest["splits"].get(s, {}).get("fingerprint") != f]  # fmt: skip
        if differs:
            raise DatasetError(
                f"{out} holds a store prepared with other settings or from other files ({', '.join(differs)} "
                f"differ); pass another --out, or delete {out} to prepare it again"
            )
        return manifest
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not a store; pass a new or empty folder as --out")
    manifest = {
        "format": store.FORMAT,
        "version": store.VERSION,
        "complete": False,
        "image_size": size,
        "layout": "uint8 (n, S, S, 3) per shard; shorter side to S, centre S x S, bilinear (Pillow)",
        "shard_size": shard_size,
        "classes": scans["train"].classes,
        "source": str(folder.resolve()),
        "splits": {
            split: {
                "folder": scan.root.name,
                "files": len(scan),
                "fingerprint": fingerprints[split],
                "shards": [],
                "skipped": [{"file": _relative(p, folder), "why": why} for p, why in scan.skipped],
            }
            for split, scan in scans.items()
        },
    }
    for split in store.SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    store.write_manifest(out, manifest)
    return manifest


def _fingerprint(scan: formats.FolderScan) -> str:
    """sha256 of the split's file list and labels: a resumed run decodes the same files in the same order."""
    pairs = zip(scan.paths, scan.labels, strict=True)
    listing = "\n".join(f"{p.relative_to(scan.root).as_posix()}\t{y}" for p, y in pairs)
    return hashlib.sha256(listing.encode()).hexdigest()


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _run(pool, plan: list[_Shard], manifest: dict, out: Path, size: int, max_pixels, bar) -> None:
    """Keep ``OPEN_SHARDS`` shards' chunks in the pool; finish each shard as its last chunk returns."""
    queue, running = deque(plan), {}
    finishing: dict[Future, _Shard] = {}
    open_count = 0
    try:
        while queue or running or finishing:
            while queue and open_count < OPEN_SHARDS:
                shard = queue.popleft()
                open_count += 1
                np.lib.format.open_memmap(shard.tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(shard.paths), size, size, 3)).flush()  # fmt: skip
                shard.ok = np.zeros(len(shard.paths), dtype=bool)
                for start in range(0, len(shard.paths), CHUNK):
                    task = pool.submit(_decode_chunk, shard.tmp, start, shard.paths[start:start + CHUNK],
                                       size, max_pixels)  # fmt: skip
                    running[task] = shard
                    shard.outstanding += 1
            done, _ = wait([*running, *finishing], return_when=FIRST_COMPLETED)
            for task in done:
                if task in finishing:
                    shard = finishing.pop(task)
                    _record(manifest, out, shard, task.result())
                    open_count -= 1
                    continue
                shard = running.pop(task)
                start, ok, failures = task.result()
                shard.ok[start:start + len(ok)] = ok
                shard.failures += failures
                for file, why in failures:
                    bar.note(f"skipped {file}: {why}")
                bar.advance(len(ok))
                shard.outstanding -= 1
                if shard.outstanding == 0:
                    final = out / shard.split / f"{shard.index:05d}"
                    finishing[pool.submit(_finish_shard, shard.tmp, final, shard.ok, shard.labels)] = shard
    except BaseException:
        for task in [*running, *finishing]:
            task.cancel()
        raise


def _decode_chunk(tmp: Path, start: int, paths: list[Path], size: int, max_pixels):
    """Worker: decode ``paths`` into rows ``start...`` of the shard's temporary file. Returns which worked."""
    images = np.load(tmp, mmap_mode="r+")
    ok = np.zeros(len(paths), dtype=bool)
    failures = []
    for i, path in enumerate(paths):
        try:
            images[start + i] = formats.decode_square(path, size, max_pixels=max_pixels)
            ok[i] = True
        except DatasetError as error:
            failures.append((str(path), str(error)))
    # no msync here: writes through a shared mapping are in the page cache, which every process reads;
    # _finish_shard makes the whole shard durable once, with fsync, before it is renamed
    del images
    return start, ok, failures


def _finish_shard(tmp: Path, final: Path, ok: np.ndarray, labels: np.ndarray) -> dict:
    """Worker: drop the rows of undecodable images, hash, and rename the shard and its labels into place."""
    if not ok.any():  # every image unreadable: an empty shard (a memory map cannot be empty)
        shape = np.load(tmp, mmap_mode="r").shape[1:]
        empty = tmp.with_name(tmp.name + ".empty.npy")
        np.save(empty, np.empty((0, *shape), np.uint8))
        os.replace(empty, tmp)
    elif not ok.all():  # rare: rewrite without the holes
        images = np.load(tmp, mmap_mode="r")
        compact = tmp.with_name(tmp.name + ".compact")
        shape = (int(ok.sum()), *images.shape[1:])
        kept = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=shape)
        for row, source in enumerate(np.flatnonzero(ok)):
            kept[row] = images[source]
        kept.flush()
        del images, kept
        os.replace(compact, tmp)
    labels_tmp = tmp.with_name(tmp.name + ".labels.npy")
    np.save(labels_tmp, labels[ok])
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        os.fsync(f.fileno())  # on disk before the manifest lists it
    images_path, labels_path = final.with_suffix(".npy"), final.with_name(final.name + ".labels.npy")
    os.replace(labels_tmp, labels_path)
    os.replace(tmp, images_path)
    return {"count": int(ok.sum()), "bytes": images_path.stat().st_size, "sha256": digest,
            "images": images_path.name, "labels": labels_path.name}  # fmt: skip


def _record(manifest: dict, out: Path, shard: _Shard, result: dict) -> None:
    """List a finished shard (and its skipped files) in the manifest, written atomically."""
    entry = manifest["splits"][shard.split]
    result = {"index": shard.index, **result}
    result["images"] = f"{shard.split}/{result['images']}"
    result["labels"] = f"{shard.split}/{result['labels']}"
    source = Path(manifest["source"])
    result["skipped"] = [{"file": _relative(Path(f), source), "why": why} for f, why in shard.failures]
    entry["shards"] = sorted([*entry["shards"], result], key=lambda s: s["index"])
    store.write_manifest(out, manifest)


def _report(manifest: dict, out: Path, progress: bool) -> None:
    for split, entry in manifest["splits"].items():
        count = sum(s["count"] for s in entry["shards"])
        skipped = [item for s in entry["shards"] for item in s["skipped"]] + entry["skipped"]
        note = f", {len(skipped)} file(s) skipped (listed in {store.MANIFEST})" if skipped else ""
        _say(f"{split}: {count:,} images in {len(entry['shards'])} shard(s){note}", progress)
    if not manifest["complete"]:
        _say(f"stopped before the end; run the same command again to finish {out}", progress)


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(f"classicnets prepare: {text}", file=sys.stderr, flush=True)


class _InlineExecutor:
    """Runs each task at submit time in this process (``workers=0``): the same code path, no processes."""

    def submit(self, fn, *args):
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as error:  # delivered by result(), as a process pool would
            future.set_exception(error)
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _executor(workers: int):
    return ProcessPoolExecutor(workers) if workers else _InlineExecutor()


class _Progress:
    """A rich progress bar over images (stderr), or nothing when ``enabled`` is off."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar, self.task = total, enabled, None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = Progress(*columns, console=Console(stderr=True))
            self.bar.__enter__()
            self.task = self.bar.add_task("decode", total=self.total)
        return self

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(f"classicnets prepare: {text}", markup=False, highlight=False)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
