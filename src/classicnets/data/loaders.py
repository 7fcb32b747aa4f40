"""Loaders that hand the trainer ready batches: (x float (B, C, S, S) on the device, y int64 on the device).

Three kinds, one interface (``len``, iteration, ``set_epoch``):

- :class:`DeviceLoader` for sets that fit in memory (Fashion-MNIST, MNIST, CIFAR, synthetic): the whole set
  is one uint8 tensor on the training device; a batch is an index into it, then whole-batch transforms there
  (airbench's CifarLoader idea). No worker processes, no per-image Python, no host round trips.
- :class:`StreamingLoader` for image folders: worker processes decode with Pillow to uint8 at the paper's
  256 (``torch.utils.data.DataLoader``), the crops, flips, PCA colour and
  normalisation then run batched on the device like the in-memory sets.
- :class:`StoreLoader` for image folders decoded once by ``classicnets prepare`` (``store.py``): batches are
  gathered from memory-mapped uint8 shards by a background thread, then transformed on the device as a
  folder's are.

Order and augmentation are seeded from (seed, epoch, rank): same seed, same batches. All three visit the
items in :func:`epoch_share`'s order, so a folder, its store and the same images in memory train alike. A
loader advances its epoch after each full pass; ``set_epoch(e)`` sets it explicitly (as DistributedSampler
does).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError, refuse_url
from . import augment as aug
from . import formats
from . import store as store_format
from .sources import ArrayDataset, canonical_name, check_data_dir, load_dataset


def stream_seed(*parts: int) -> int:
    """One well-mixed 63-bit seed from (seed, epoch, rank, stream)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


TEST_SUBSET_SEED = 0  # every run of an experiment is tested on the same images, whatever its seed


def balanced_subset(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``count`` items, as even across classes as the data allow, in a seeded random order."""
    if count >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    by_class = torch.argsort(shuffled, stable=True)
    sorted_labels = shuffled[by_class]
    starts = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = torch.empty_like(by_class)
    rank_in_class[by_class] = torch.arange(len(labels)) - starts
    # round robin over classes: the k-th image of every class before the (k+1)-th of any
    key = rank_in_class * (int(labels.max()) + 1) + shuffled
    return order[torch.argsort(key)[:count]].sort().values


def training_batch_size(batch_size: int, per_rank: int, total: int, world_size: int) -> int:
    """The training batch for ``per_rank`` images a rank sees each epoch (of ``total``): ``batch_size``, or
    all of them in one batch when there are fewer, with a warning. Dropping the last partial batch (so that
    every step has the same size) must not drop the only one: a run would train nothing and say it is done."""
    if per_rank == 0:
        raise ConfigError(
            f"{total} training image(s) cannot be shared by {world_size} processes (each needs at least "
            "one); add images or run on fewer processes"
        )
    if per_rank >= batch_size:
        return batch_size
    ranks = f" per process ({world_size} processes)" if world_size > 1 else ""
    warnings.warn(
        f"only {per_rank} training image(s){ranks}, fewer than the batch of {batch_size}: each epoch "
        f"trains one batch of {per_rank} instead. Add images, or pass a --batch-size of at most "
        f"{per_rank * world_size} to choose the batch yourself",
        stacklevel=3,
    )
    return per_rank


def training_subset(labels: torch.Tensor, subset: int | None, seed: int, classes: list[str],
                    source: str) -> torch.Tensor | None:
    """Indices of the ``subset`` training images to use (None: all), after checking that what is left can
    teach a classifier: at least two classes, and every class at least one image (else a warning)."""
    keep = None
    if subset is not None:
        if subset > len(labels):
            warnings.warn(
                f"subset={subset:,} is larger than the {len(labels):,} training images of {source}; "
                f"training on all {len(labels):,}. Pass --subset {len(labels):,} or less, or leave it unset",
                stacklevel=3,
            )
        else:
            keep = balanced_subset(labels, subset, seed)
            labels = labels[keep]
    counts = torch.bincount(labels, minlength=len(classes))
    present = int((counts > 0).sum())
    if present < 2:
        names = [name for name, count in zip(classes, counts.tolist(), strict=True) if count]
        raise DatasetError(
            f"{source}: the training images hold {present} class(es) {names}; a classifier needs at "
            "least two (with one, the loss is 0 from the start and nothing is learnt). "
            "Add a folder per class" + (", or a larger --subset" if keep is not None else "")
        )
    if present < len(classes):
        missing = [name for name, count in zip(classes, counts.tolist(), strict=True) if count == 0]
        warnings.warn(
            f"{source}: {len(missing)} of the {len(classes)} classes have no training image "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); the model cannot learn them"
            + (f". --subset {int(labels.numel())} is smaller than the number of classes" if keep is not None
               and len(labels) < len(classes) else ""),
            stacklevel=3,
        )
    return keep


# ---------------------------------------------------------------------------- every loader's order


def epoch_share(
    total: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int
) -> torch.Tensor:
    """The positions in 0..total-1 that ``rank`` visits in ``epoch``, in order: every loader's order.

    Shuffled (training): one permutation per (seed, epoch), the same on every rank, cut to a multiple of
    ``world_size`` (drop_last), rank r taking every world_size-th position from r: disjoint, equal shares.
    That is DistributedSampler's layout, but seeded with ``stream_seed(seed, epoch)`` where
    DistributedSampler seeds with seed + epoch: with seed + epoch the run with seed 1 would see in its first
    epoch the order the run with seed 0 sees in its second, and an experiment's seeds would not be
    independent. In order (testing): every position once across the ranks, rank r from r in steps of
    ``world_size``.
    """
    if not shuffle:
        return torch.arange(rank, total, world_size)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(stream_seed(seed, epoch)))
    return order[: total // world_size * world_size][rank::world_size]


def share_size(total: int, *, shuffle: bool, rank: int, world_size: int) -> int:
    """How many positions :func:`epoch_share` gives ``rank`` each epoch."""
    return total // world_size if shuffle else len(range(rank, total, world_size))


class _RankShare:
    """What every loader shares: this rank's share of the ``item_count`` items in each epoch's order
    (:func:`epoch_share`), the batches it makes (whole batches only when shuffling, as training drops the
    last partial batch; fewer items than a batch make one smaller batch), the epoch that seeds the order."""

    def __init__(self, item_count: int, *, batch_size: int, shuffle: bool, seed: int, rank: int,
                 world_size: int):  # fmt: skip
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must lie in 0..world_size-1, found rank {rank}, world_size {world_size}")
        self.item_count, self.shuffle, self.seed, self.rank, self.world_size = (
            item_count, shuffle, seed, rank, world_size)  # fmt: skip
        self.batch_size = batch_size
        if shuffle:
            self.batch_size = training_batch_size(batch_size, self.num_samples, item_count, world_size)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        return share_size(self.item_count, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        if self.shuffle:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_positions(self, epoch: int) -> torch.Tensor:
        """The positions (0..item_count-1) this rank visits in ``epoch``, in order (on the CPU)."""
        return epoch_share(self.item_count, shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank,
                           world_size=self.world_size)  # fmt: skip


# ---------------------------------------------------------------------------------------- in memory


class DeviceLoader(_RankShare):
    """Batches from a uint8 set held on the device. ``shuffle`` (training): a new seeded order each epoch and
    ``drop_last``; each rank takes a disjoint, equal share of every epoch. Without shuffle (testing): the set
    in order, every image once across the ranks (shares differ by at most one image)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        transform: aug.BatchTransform,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(len(labels), batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size)  # fmt: skip
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.transform = transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        indices = self.epoch_positions(epoch).to(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stream_seed(self.seed, epoch, self.rank, 1))
        for batch in indices.split(self.batch_size)[: len(self)]:
            yield self.transform(self.images[batch], generator), self.labels[batch]
        self.epoch = epoch + 1


# ---------------------------------------------------------------------------------------- streaming


class FolderDataset(torch.utils.data.Dataset):
    """Decodes one image per item with Pillow into uint8 (size, size, 3): shorter side to ``size``, centre
    square (the paper's 256x256 preparation, done in one resample). A file that cannot be decoded comes back
    as a failure record, so the main process decides whether to skip and count it or to stop."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, max_pixels: int | None):
        self.paths, self.labels, self.size, self.max_pixels = paths, labels, size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            square = formats.decode_square(path, self.size, max_pixels=self.max_pixels)
        except DatasetError as error:
            return None, self.labels[index], (str(path), str(error))
        return torch.from_numpy(square.copy()), self.labels[index], None


def _collate(items):
    good = [(image, label) for image, label, failure in items if failure is None]
    failures = [failure for _, _, failure in items if failure is not None]
    if not good:
        return None, None, failures
    images = torch.stack([image for image, _ in good])  # B x S x S x 3
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, failures


class _ShareSampler(torch.utils.data.Sampler):
    """A DataLoader sampler that yields a loader's :func:`epoch_share` positions for the epoch it is set to,
    so a folder is read in the order the in-memory and store loaders use."""

    def __init__(self, share: _RankShare):
        self.share, self.epoch = share, 0

    def __len__(self) -> int:
        return self.share.num_samples

    def __iter__(self):
        return iter(self.share.epoch_positions(self.epoch).tolist())


class StreamingLoader(_RankShare):
    """Image-folder batches: DataLoader workers decode, the device does the rest (``transform``)."""

    def __init__(
        self,
        dataset: FolderDataset,
        *,
        batch_size: int,
        transform: aug.BatchTransform,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        on_bad: str = "skip",
    ):
        super().__init__(len(dataset), batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size)  # fmt: skip
        self.device = torch.device(device)
        self.transform, self.on_bad = transform, on_bad
        self.skipped: list[tuple[str, str]] = []  # (file, why) over all epochs
        self.sampler = _ShareSampler(self)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            drop_last=shuffle,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.sampler.epoch = epoch
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stream_seed(self.seed, epoch, self.rank, 1))
        skipped_before = len(self.skipped)
        for images, labels, failures in self.loader:
            self._note_failures(failures)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC bytes -> NCHW view
            yield self.transform(images, generator), labels.to(self.device, non_blocking=True)
        if len(self.skipped) > skipped_before:
            first = self.skipped[skipped_before]
            warnings.warn(
                f"skipped {len(self.skipped) - skipped_before} unreadable image(s) this epoch "
                f"(first: {first[0]}: {first[1]}); to stop at the first one instead, train with "
                "--on-bad error (Python: on_bad='error')",
                stacklevel=2,
            )
        self.epoch = epoch + 1

    def _note_failures(self, failures: list[tuple[str, str]]) -> None:
        if failures and self.on_bad == "error":
            raise DatasetError(
                f"{failures[0][1]} Fix or remove the file, or skip and count unreadable images: "
                "--on-bad skip (Python: on_bad='skip')."
            )
        self.skipped.extend(failures)


# ---------------------------------------------------------------------------------------- from a store


class StoreLoader(_RankShare):
    """Batches from a prepared store (``classicnets prepare``): each batch's images are gathered from the
    memory-mapped shards into a reused (pinned, on CUDA) buffer by a background thread while the previous
    batch trains, copied to the device, and transformed there like an image folder's.

    Order: :func:`epoch_share`'s, as for a folder, so a store and its folder give the same batches, in the
    same order when the store has one shard; with several shards a batch's images come grouped by shard.
    ``resize_to``: resize on the device first (when the store's side does not suit the image size)."""

    def __init__(
        self,
        split,
        *,
        batch_size: int,
        transform: aug.BatchTransform,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        indices: np.ndarray | None = None,
        limit: int | None = None,
        resize_to: int | None = None,
        prefetch: int = 2,
    ):
        self.indices = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.indices = self.indices[:limit]
        super().__init__(len(self.indices), batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size)  # fmt: skip
        self.split, self.transform, self.device = split, transform, torch.device(device)
        self.resize_to, self.prefetch = resize_to, max(1, prefetch)
        self._buffers: list[torch.Tensor] | None = None

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The store indices this rank visits in ``epoch``, in order."""
        return self.indices[self.epoch_positions(epoch).numpy()]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        indices = self.epoch_indices(epoch)
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stream_seed(self.seed, epoch, self.rank, 1))
        # one buffer more than batches in flight: the one being consumed is never written; kept across
        # epochs (pinning memory is slow), unless another pass over this loader is still using them
        buffers, self._buffers = self._buffers, None
        if buffers is None:
            side, pinned = self.split.image_size, self.device.type == "cuda"
            buffers = [torch.empty((self.batch_size, side, side, 3), dtype=torch.uint8, pin_memory=pinned)
                       for _ in range(self.prefetch + 1)]  # fmt: skip
        try:
            yield from self._batches(batches[: len(self)], buffers, generator)
        finally:
            self._buffers = buffers  # the gathering threads have finished with them
        self.epoch = epoch + 1

    def _batches(self, batches: list[np.ndarray], buffers: list[torch.Tensor], generator: torch.Generator):
        from concurrent.futures import ThreadPoolExecutor

        slots, cuda = len(buffers), self.device.type == "cuda"
        copied: list = [None] * slots  # CUDA events: a buffer is refilled only after its copy is done
        with ThreadPoolExecutor(self.prefetch, thread_name_prefix="store-gather") as pool:
            pending = [pool.submit(self._fill, batches[i], buffers[i % slots], copied, i % slots)
                       for i in range(min(self.prefetch, len(batches)))]  # fmt: skip
            try:
                for i in range(len(batches)):
                    images, labels = pending.pop(0).result()
                    images = images.to(self.device, non_blocking=True)
                    if cuda:
                        copied[i % slots] = torch.cuda.Event()
                        copied[i % slots].record()
                    x = self._transformed(images, generator)  # on the CPU the buffer is read here
                    ahead = i + self.prefetch
                    if ahead < len(batches):
                        task = (batches[ahead], buffers[ahead % slots], copied, ahead % slots)
                        pending.append(pool.submit(self._fill, *task))
                    yield x, labels.to(self.device, non_blocking=True)
            finally:
                for task in pending:
                    task.cancel()

    def _fill(self, indices: np.ndarray, buffer: torch.Tensor, copied: list, slot: int):
        if copied[slot] is not None:
            copied[slot].synchronize()
        order = self.split.gather(indices, buffer)
        labels = self.split.labels[torch.from_numpy(indices[order])]
        if self.device.type == "cuda":  # an asynchronous copy needs pinned memory (torch caches the blocks)
            labels = labels.pin_memory()
        return buffer[: len(indices)], labels

    def _transformed(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = images.permute(0, 3, 1, 2)  # NHWC bytes -> NCHW view
        if self.resize_to is not None and self.resize_to != images.shape[-1]:
            images = aug.resize(aug.to_float(images), self.resize_to)
        return self.transform(images, generator)


# -------------------------------------------------------------------------------------- the builder


@dataclass(frozen=True)
class LoaderSpec:
    """How to batch a data set, whatever its kind: every setting of :func:`build_loaders` but where the
    data are. Each data set kind (arrays in memory, an image folder, a prepared store) is a :class:`_Parts`
    that :func:`_assemble` turns into loaders; a new kind adds a ``_Parts`` subclass and one branch there."""

    image_size: int
    batch_size: int
    eval_batch_size: int
    augment: str = "none"
    normalize: bool = True
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    subset: int | None = None
    test_subset: int | None = None  # that many test images, balanced, the same for every seed
    num_workers: int = 2  # image folders: decoding processes
    on_bad: str = "skip"  # image folders: "skip" or "error" on a file that is not an image
    max_pixels: int | None = formats.DEFAULT_MAX_PIXELS  # image folders: decompression-bomb guard
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) instead of the set's

    def __post_init__(self):
        if self.augment not in aug.PLANS:
            raise ConfigError(f"unknown augment {self.augment!r}; choose one of {', '.join(aug.AUGMENTS)}")
        if self.on_bad not in ("skip", "error"):
            raise ConfigError(f"on_bad must be 'skip' or 'error', found {self.on_bad!r}")
        if self.image_size < 1 or self.batch_size < 1:
            raise ConfigError(f"image_size and batch_size must be positive, found {self.image_size} and "
                              f"{self.batch_size}")

    @property
    def needs_pca(self) -> bool:
        return aug.PLANS[self.augment].pca


@dataclass
class Loaders:
    """What ``build_loaders`` returns: the two loaders and what a model and a checkpoint need to know."""

    train: DeviceLoader | StreamingLoader | StoreLoader
    test: DeviceLoader | StreamingLoader | StoreLoader
    classes: list[str]
    in_channels: int
    num_classes: int
    mean: tuple[float, ...]  # what was subtracted ((0, ...) without normalisation)
    std: tuple[float, ...]  # what was divided by ((1, ...) without normalisation)
    image_size: int
    augment: str
    dataset: str  # the name, or the image folder's path (either can be passed back to build_loaders)
    train_size: int  # images in the training split used (after ``subset``), all ranks together
    test_size: int
    # at pre_crop_size, for ten-crop TTA
    test_uncropped: DeviceLoader | StreamingLoader | StoreLoader | None = None
    pca: aug.ColourPCA | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # files left out while scanning folders


def build_loaders(
    dataset: str | Path | tuple[ArrayDataset, ArrayDataset],
    *,
    data_dir: str | Path | None = None,
    image_size: int,
    batch_size: int,
    eval_batch_size: int | None = None,
    augment: str = "none",
    normalize: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
    num_workers: int = 2,
    on_bad: str = "skip",
    max_pixels: int | None = formats.DEFAULT_MAX_PIXELS,
    mirrors: list[str] | None = None,
    cache_dir: str | Path | None = None,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Loaders:
    """Train and test loaders for a named data set, an image folder (its path, or ``"imagefolder"`` with
    ``data_dir``; it holds train/ and val/ or test/), or a (train, test) pair of :class:`ArrayDataset`.

    ``augment``: "none", "flip", "crop-flip" (random crop with zero padding, then flip), "resized-crop-flip"
    (Inception-style crops), "paper" (random 224-of-256 crops, flips and PCA colour). ``normalize``: subtract
    the training set's per-channel mean and divide by its std (the paper subtracts the mean image instead);
    False keeps [0, 1] like d2l. ``stats``: (mean, std) to normalise with instead of the training set's,
    e.g. those pretrained weights were trained with (ImageNet's). ``subset``: only that many training images,
    balanced across classes; ``test_subset``: only that many test images, balanced, the same ones for every
    seed.
    """
    spec = LoaderSpec(
        image_size=image_size, batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size,
        augment=augment, normalize=normalize, device=device, dtype=dtype, channels_last=channels_last,
        seed=seed, rank=rank, world_size=world_size, subset=subset, test_subset=test_subset,
        num_workers=num_workers, on_bad=on_bad, max_pixels=max_pixels, stats=stats,
    )
    folder = image_folder_root(dataset, data_dir)
    if folder is not None and store_format.is_store(folder):
        return _assemble(spec, _StoreParts.open(folder, spec))
    if folder is not None:
        return _assemble(spec, _FolderParts.scan(folder, spec))
    if isinstance(dataset, str):
        name = canonical_name(dataset)
        load = dict(data_dir=data_dir, download=download, mirrors=mirrors, cache_dir=cache_dir)
        if name == "synthetic":
            load = {}
        train_set, test_set = load_dataset(name, "train", **load), load_dataset(name, "test", **load)
    else:
        train_set, test_set = dataset
    return _assemble(spec, _ArrayParts.of(train_set, test_set, spec))


def image_folder_root(dataset, data_dir=None) -> Path | None:
    """The image folder that ``dataset`` asks for: "imagefolder" with ``data_dir``, "imagefolder:<path>",
    or a path (one that is a directory, or any with a path separator, such as the one a checkpoint's header
    keeps, even if it is gone); None for a named data set or an ArrayDataset pair."""
    if isinstance(dataset, tuple):
        return None
    text = str(dataset)
    refuse_url(text, "dataset", DatasetError)
    if text.strip().lower().replace("_", "-") in ("imagefolder", "image-folder"):
        if data_dir is None:
            raise ConfigError(
                "dataset 'imagefolder' needs data_dir (--data-dir) holding train/ and val/ or test/"
            )
        return check_data_dir(data_dir)
    if text.startswith("imagefolder:"):
        return Path(text.removeprefix("imagefolder:"))
    if isinstance(dataset, Path) or Path(text).is_dir() or os.sep in text:
        return Path(text)
    return None


# One grey level: the smallest std normalisation divides by. A channel that never changes in the training
# images (std 0) would otherwise turn every input into NaN or infinity.
MIN_STD = 1 / 255


def _floored_std(std, source: str) -> tuple[float, ...]:
    if min(std) >= MIN_STD:
        return tuple(std)
    warnings.warn(
        f"channel(s) {[c for c, s in enumerate(std) if s < MIN_STD]} of the {source} training images "
        f"hardly vary (std {[round(s, 6) for s in std]}); normalising divides by at least {MIN_STD:.4f}. "
        "Check the images, or pass --no-normalize",
        stacklevel=3,  # build_loaders, which called _assemble
    )
    return tuple(max(s, MIN_STD) for s in std)


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return values
    if channels == 1:
        return (sum(values) / len(values),)  # grey images: the channels' average
    return tuple(values[i % len(values)] for i in range(channels))


@dataclass
class _Parts:
    """What a data set kind supplies to :func:`_assemble`: its facts, its training-set statistics, and
    ``loader(split, transform, batch_size, shuffle)`` that batches one split ("train" or "test")."""

    source: str  # BatchTransform's: "array" (small images resized on the device) or "folder" (decoded)
    classes: list[str]
    channels: int
    name: str
    train_size: int
    test_size: int
    mean: list[float]  # of the training images, in [0, 1] units
    std: list[float]
    pca: aug.ColourPCA | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def loader(self, split: str, transform: aug.BatchTransform, batch_size: int, shuffle: bool):
        raise NotImplementedError


def _assemble(spec: LoaderSpec, parts: _Parts) -> Loaders:
    """The train, test and uncropped-test (ten-crop) loaders of any data set kind, and their facts."""
    mean, std = tuple(parts.mean), tuple(parts.std)
    if spec.stats is not None:  # given (a pretrained model's): fitted to the images' channels
        mean, std = (_fit_channels(tuple(v), parts.channels) for v in spec.stats)
    elif spec.normalize:
        std = _floored_std(std, parts.source)
    stats = (mean, std) if spec.normalize else ((0.0,) * parts.channels, (1.0,) * parts.channels)
    transform = partial(
        aug.BatchTransform, image_size=spec.image_size, augment=spec.augment, source=parts.source,
        dtype=spec.dtype, channels_last=spec.channels_last, pca=parts.pca,
        **(dict(mean=stats[0], std=stats[1]) if spec.normalize else {}),
    )
    return Loaders(
        train=parts.loader("train", transform(train=True), spec.batch_size, shuffle=True),
        test=parts.loader("test", transform(train=False), spec.eval_batch_size, shuffle=False),
        test_uncropped=parts.loader("test", transform(train=False, uncropped=True), spec.eval_batch_size,
                                    shuffle=False),
        classes=list(parts.classes), in_channels=parts.channels, num_classes=len(parts.classes),
        mean=stats[0], std=stats[1], image_size=spec.image_size, augment=spec.augment, dataset=parts.name,
        train_size=parts.train_size, test_size=parts.test_size, pca=parts.pca, skipped=parts.skipped,
    )


@dataclass
class _ArrayParts(_Parts):
    """A set held in memory: each split one uint8 tensor, batched on the device by :class:`DeviceLoader`."""

    spec: LoaderSpec | None = None
    splits: dict = field(default_factory=dict)  # split -> (images, labels)

    @classmethod
    def of(cls, train_set: ArrayDataset, test_set: ArrayDataset, spec: LoaderSpec) -> _ArrayParts:
        if train_set.images.shape[1:] != test_set.images.shape[1:] or train_set.classes != test_set.classes:
            raise DatasetError(
                f"{train_set.name}: the train and test splits differ in image shape "
                f"({tuple(train_set.images.shape[1:])} vs {tuple(test_set.images.shape[1:])}) or classes"
            )
        images, labels = train_set.images, train_set.labels
        keep = training_subset(labels, spec.subset, spec.seed, list(train_set.classes), train_set.name)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        test_images, test_labels = test_set.images, test_set.labels
        if spec.test_subset is not None:
            keep = balanced_subset(test_labels, spec.test_subset, TEST_SUBSET_SEED)
            test_images, test_labels = test_images[keep], test_labels[keep]
        mean, std = aug.channel_stats(images)
        return cls(
            source="array", classes=list(train_set.classes), channels=images.shape[1], name=train_set.name,
            train_size=len(labels), test_size=len(test_labels), mean=mean, std=std,
            pca=aug.colour_pca(images, seed=spec.seed) if spec.needs_pca else None, spec=spec,
            splits={"train": (images, labels), "test": (test_images, test_labels)},
        )

    def loader(self, split, transform, batch_size, shuffle):
        images, labels = self.splits[split]
        spec = self.spec
        loader = DeviceLoader(images, labels, batch_size=batch_size, transform=transform, shuffle=shuffle,
                              device=spec.device, seed=spec.seed, rank=spec.rank, world_size=spec.world_size)
        self.splits[split] = (loader.images, loader.labels)  # later loaders of the split share these copies
        return loader


@dataclass
class _FolderParts(_Parts):
    """An image folder: worker processes decode each split at the pre-crop size (:class:`StreamingLoader`)."""

    spec: LoaderSpec | None = None
    splits: dict = field(default_factory=dict)  # split -> FolderDataset

    @classmethod
    def scan(cls, root: Path, spec: LoaderSpec) -> _FolderParts:
        train_scan, test_scan = formats.scan_splits(root, on_bad=spec.on_bad)
        paths, labels = train_scan.paths, train_scan.labels
        keep = training_subset(torch.tensor(labels), spec.subset, spec.seed, train_scan.classes,
                               str(train_scan.root))
        if keep is not None:
            paths, labels = [paths[i] for i in keep.tolist()], [labels[i] for i in keep.tolist()]
        test_paths, test_labels = test_scan.paths, test_scan.labels
        if spec.test_subset is not None:
            keep = balanced_subset(torch.tensor(test_labels), spec.test_subset, TEST_SUBSET_SEED).tolist()
            test_paths, test_labels = [test_paths[i] for i in keep], [test_labels[i] for i in keep]
        size = aug.pre_crop_size(spec.image_size)
        mean, std, pca = _folder_stats(paths, labels, spec.max_pixels, spec.num_workers, spec.seed,
                                       classes=train_scan.classes)
        skipped = [(str(p), why) for p, why in train_scan.skipped + test_scan.skipped]
        if skipped:
            warnings.warn(
                f"{root}: left out {len(skipped)} file(s) that are not images (first: {skipped[0][0]})",
                stacklevel=3,  # the caller of build_loaders
            )
        return cls(
            source="folder", classes=train_scan.classes, channels=3, name=str(root), train_size=len(paths),
            test_size=len(test_paths), mean=mean, std=std, pca=pca if spec.needs_pca else None,
            skipped=skipped, spec=spec,
            splits={"train": FolderDataset(paths, labels, size, spec.max_pixels),
                    "test": FolderDataset(test_paths, test_labels, size, spec.max_pixels)},
        )

    def loader(self, split, transform, batch_size, shuffle):
        spec = self.spec
        return StreamingLoader(
            self.splits[split], batch_size=batch_size, transform=transform, shuffle=shuffle,
            device=spec.device, seed=spec.seed, rank=spec.rank, world_size=spec.world_size,
            num_workers=spec.num_workers, on_bad=spec.on_bad,
        )


@dataclass
class _StoreParts(_Parts):
    """A store prepared by ``classicnets prepare``: NHWC uint8 shards gathered by :class:`StoreLoader`."""

    spec: LoaderSpec | None = None
    splits: dict = field(default_factory=dict)  # split -> (store split, indices or None: all)
    resize_to: int | None = None

    @classmethod
    def open(cls, root: Path, spec: LoaderSpec) -> _StoreParts:
        train_split = store_format.open_store(root, "train")
        test_split = store_format.open_store(root, "val")
        keep = training_subset(train_split.labels, spec.subset, spec.seed, train_split.classes, str(root))
        indices = None if keep is None else keep.numpy()
        test_indices = None
        if spec.test_subset is not None:
            test_indices = balanced_subset(test_split.labels, spec.test_subset, TEST_SUBSET_SEED).numpy()
        mean, std, pca = _store_stats(train_split, spec.seed)
        classes = train_split.classes
        return cls(
            source="folder", classes=classes, channels=3, name=str(root),
            train_size=len(train_split) if indices is None else len(indices),
            test_size=len(test_split) if test_indices is None else len(test_indices),
            mean=mean, std=std, pca=pca if spec.needs_pca else None, spec=spec,
            splits={"train": (train_split, indices), "test": (test_split, test_indices)},
            resize_to=_store_resize(train_split, spec.image_size),
        )

    def loader(self, split, transform, batch_size, shuffle):
        data, indices = self.splits[split]
        spec = self.spec
        return StoreLoader(data, batch_size=batch_size, transform=transform, shuffle=shuffle, indices=indices,
                           device=spec.device, seed=spec.seed, rank=spec.rank, world_size=spec.world_size,
                           resize_to=self.resize_to)


def _store_resize(split, image_size: int) -> int | None:
    """None when the store's images can be cropped as they are: the store's side is the paper's pre-crop
    size for ``image_size`` within 5 % (a 256 store serves 224 and the paper net's 227); else the side to
    resize to on the device (a 256 store training at 32 px is resized to 37 first)."""
    want = aug.pre_crop_size(image_size)
    side = split.image_size
    return None if image_size <= side and abs(side - want) <= 0.05 * side else want


def _store_stats(split, seed: int, sample: int = 512):
    """Mean, std and colour PCA from a class-balanced sample of the store's training images, every 4th pixel
    (the folder path's 512 images at 64 px, without decoding)."""
    keep = balanced_subset(split.labels, sample, seed).numpy()
    images = torch.empty((len(keep), split.image_size, split.image_size, 3), dtype=torch.uint8)
    split.gather(keep, images)
    images = images[:, ::4, ::4].permute(0, 3, 1, 2).contiguous()
    mean, std = aug.channel_stats(images)
    return mean, std, aug.colour_pca(images)


def folder_eval_loader(
    root: str | Path,
    split: str,
    *,
    classes: list[str],
    image_size: int,
    batch_size: int,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    uncropped: bool = False,
    channels_last: bool = False,
    device: torch.device | str = "cpu",
    num_workers: int = 2,
    limit: int | None = None,
    max_pixels: int | None = formats.DEFAULT_MAX_PIXELS,
) -> StreamingLoader | StoreLoader:
    """Batches of one split of an image folder (or of a store prepared from one) as a trained model saw its
    test images: decoded at the pre-crop size, centre-cropped to ``image_size`` (or kept whole with
    ``uncropped``, for ten-crop) and normalised with the checkpoint's ``mean``/``std``. ``split`` "test" reads
    val/ (or test/), "train" train/; the class folders must be ``classes``, in that order."""
    transform = aug.BatchTransform(image_size=image_size, train=False, source="folder", mean=mean, std=std,
                                   channels_last=channels_last, uncropped=uncropped)
    if store_format.is_store(root):
        data = store_format.open_store(root, "train" if split == "train" else "val")
        _check_classes(data.root, data.classes, classes, "classes")
        return StoreLoader(data, batch_size=batch_size, transform=transform, device=device, shuffle=False,
                           limit=limit, resize_to=_store_resize(data, image_size))
    names = ("train",) if split == "train" else formats.TEST_SPLIT_NAMES
    scan = formats.scan_image_folder(formats.split_dir(Path(root), names), on_bad="skip")
    _check_classes(scan.root, scan.classes, classes)
    paths, labels = scan.paths[:limit], scan.labels[:limit]
    data = FolderDataset(paths, labels, aug.pre_crop_size(image_size), max_pixels)
    return StreamingLoader(data, batch_size=batch_size, transform=transform, device=device, shuffle=False,
                           num_workers=num_workers, on_bad="skip")


def _check_classes(where: Path, found: list[str], classes: list[str], what: str = "class folders") -> None:
    if found != list(classes):
        raise DatasetError(
            f"{where} has {what} {found[:5]}... ({len(found)}), but the model was trained on "
            f"{list(classes)[:5]}... ({len(classes)}); evaluate on a folder or store with the same classes"
        )


def _folder_stats(paths, labels, max_pixels, num_workers, seed, *, classes: list[str], sample: int = 512,
                  side: int = 64):
    """Mean, std and colour PCA from a class-balanced sample of training images decoded small: the paper
    computes its PCA over all of ImageNet; 512 images fix a 3x3 covariance well enough for jitter.

    The sample holds images of every class (at least one each, all of a class's first few), so it also
    finds a class none of whose images decode: training would go on without it, silently."""
    keep = balanced_subset(torch.tensor(labels), max(sample, len(classes)), seed).tolist()
    data = FolderDataset([paths[i] for i in keep], [labels[i] for i in keep], side, max_pixels)
    loader = torch.utils.data.DataLoader(data, batch_size=64, num_workers=num_workers, collate_fn=_collate)
    batches, decoded, failures = [], torch.zeros(len(classes), dtype=torch.int64), []
    for images, batch_labels, batch_failures in loader:
        failures += batch_failures
        if images is not None:
            batches.append(images.permute(0, 3, 1, 2))
            decoded += torch.bincount(batch_labels, minlength=len(classes))
    sampled = torch.bincount(torch.tensor(data.labels), minlength=len(classes))
    broken = [c for c in range(len(classes)) if sampled[c] and not decoded[c]]
    if broken:
        label_of = dict(zip(map(str, data.paths), data.labels, strict=True))
        first = next((path, why) for path, why in failures if label_of[path] in broken)
        raise DatasetError(
            f"none of the {int(sampled[broken[0]])} image(s) of class {classes[broken[0]]!r} read so far can "
            f"be decoded (first: {first[1]}); training would go on without the class"
            + (f" (and {len(broken) - 1} other class(es) alike)" if len(broken) > 1 else "")
            + ". Fix or replace its files, or remove its folder"
        )
    images = torch.cat(batches)
    mean, std = aug.channel_stats(images)
    return mean, std, aug.colour_pca(images)
