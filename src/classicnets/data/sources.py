"""Where the data sets live, how they are fetched and checked, and the parsed-array cache.

Search order for a named data set (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100):

1. ``data_dir`` when given (``--data-dir``): only there, and a download goes there;
2. ``$CLASSICNETS_DATA``, then the user cache dir (platformdirs), then Debian's ``/usr/share/datasets/<name>``
   (``apt-get install dataset-fashion-mnist``); a download goes to ``$CLASSICNETS_DATA`` or the user cache.

Each directory is tried as is, as ``<dir>/<name>`` and in torchvision's layout (``<dir>/FashionMNIST/raw``).
A download streams into a temporary file next to its destination, is verified, then renamed into place, so
an interrupted or corrupt download never leaves a file that looks complete.

Checksums: the md5 of each file as its canonical address serves it (published, used by torchvision), and
for Fashion-MNIST the sha256 of each file's decompressed content, computed from the real files (Debian's
package recompresses the .gz files, so their md5 differs from the published one while the content is
identical). A file passes when either matches. Parsed arrays are cached as .npy keyed by the sha256 of the
source files, so a second load skips decompressing and parsing.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError, refuse_url
from . import formats, store

ENV_DATA = "CLASSICNETS_DATA"  # a directory holding data sets (searched, and where downloads go)
ENV_CACHE = "CLASSICNETS_CACHE"  # where parsed arrays and downloads are cached (default: platformdirs)
ENV_MIRROR = "CLASSICNETS_DATA_MIRROR"  # a base URL tried instead of the canonical addresses
DEBIAN_ROOT = Path("/usr/share/datasets")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass(frozen=True)
class FileSpec:
    name: str
    md5: str | None = None  # of the file as served at the canonical address
    content_sha256: str | None = None  # of the decompressed content; computed from the real files


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # "idx" or "cifar"
    urls: tuple[str, ...]  # base addresses, canonical first
    files: dict[str, tuple[FileSpec, ...]]  # split -> files (idx: images, labels; cifar: batches)
    counts: dict[str, int]
    classes: tuple[str, ...] = ()
    layouts: tuple[str, ...] = ()  # sub-directories the files are commonly found in
    archive: FileSpec | None = None  # cifar: the tarball
    folder: str = ""  # cifar: the folder inside the tarball
    meta: FileSpec | None = None  # cifar: the file with the class names
    label_key: str = ""
    names_key: str = ""
    debian_package: str = ""


def _idx_files(prefix: str, sums: dict[str, tuple[str, str | None]]) -> tuple[FileSpec, ...]:
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    return tuple(FileSpec(n + ".gz", *sums[n]) for n in names)


_FASHION_SUMS = {
    "train-images-idx3-ubyte": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (
        "bef4ecab320f06d8554ea6380940ec79",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}  # fmt: skip
_MNIST_SUMS = {  # only the md5 of the .gz files is published
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", None),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", None),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", None),
}

SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "idx",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train": _idx_files("train", _FASHION_SUMS), "test": _idx_files("t10k", _FASHION_SUMS)},
        {"train": 60_000, "test": 10_000},
        tuple(FASHION_MNIST_CLASSES),
        layouts=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        "mnist", "idx",
        # Yann LeCun's page is the canonical address; it often refuses downloads, so PyTorch's mirror follows.
        ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        {"train": _idx_files("train", _MNIST_SUMS), "test": _idx_files("t10k", _MNIST_SUMS)},
        {"train": 60_000, "test": 10_000},
        tuple(str(d) for d in range(10)),
        layouts=("mnist", "MNIST/raw"),
    ),
    "cifar10": DatasetSpec(
        "cifar10", "cifar",
        ("https://www.cs.toronto.edu/~kriz/",),
        {
            "train": tuple(FileSpec(f"data_batch_{i}", md5) for i, md5 in enumerate((
                "c99cafc152244af753f735de768cd75f", "d4bba439e000b95fd0a9bffe97cbabec",
                "54ebc095f3ab1f0389bbae665268c751", "634d18415352ddfa80567beed471001a",
                "482c414d41f54cd18b22e5b47cb7c3cb"), start=1)),
            "test": (FileSpec("test_batch", "40351d587109b95175f43aff81a1287e"),),
        },
        {"train": 50_000, "test": 10_000},
        layouts=("cifar10", "cifar-10"),
        archive=FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
        folder="cifar-10-batches-py",
        meta=FileSpec("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        label_key="labels", names_key="label_names",
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar",
        ("https://www.cs.toronto.edu/~kriz/",),
        {
            "train": (FileSpec("train", "16019d7e3df5f24257cddd939b257f8d"),),
            "test": (FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        },
        {"train": 50_000, "test": 10_000},
        layouts=("cifar100", "cifar-100"),
        archive=FileSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
        folder="cifar-100-python",
        meta=FileSpec("meta", "7973b15100ade9c7d40fb424638fde48"),
        label_key="fine_labels", names_key="fine_label_names",
    ),
}  # fmt: skip

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}
DATASETS = (*SPECS, "synthetic")


def canonical_name(name: str) -> str:
    """'Fashion_MNIST', 'fashionmnist', 'CIFAR-10' -> the registered name; unknown names fail."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, _ALIASES.get(key.replace("-", ""), key))
    if key not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, "
            "or 'imagefolder' with --data-dir, or the path of an image folder or of a store made by "
            "`classicnets prepare`."
        )
    return key


# ---------------------------------------------------------------------------------------- the dataset


@dataclass
class ArrayDataset:
    """A data set small enough to hold in memory, as the readers deliver it."""

    images: torch.Tensor  # uint8 (N, C, H, W), CPU
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    name: str
    split: str = "train"
    source: str = ""  # where it was read from
    checksums: dict[str, str] = field(default_factory=dict)  # file -> sha256 of the file as stored

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        counts = f"{len(self)} images {shape}, {len(self.classes)} classes"
        return f"ArrayDataset({self.name!r}, {self.split}, {counts})"


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    download: bool = True,
    *,
    mirrors: list[str] | None = None,
    cache_dir: str | Path | None = None,
    verify: bool = True,
) -> ArrayDataset:
    """Read a named data set's split as uint8 tensors, finding (or downloading) and verifying its files.

    ``verify=False`` skips the checksum and count checks (for modified copies); the format checks remain.
    ``name`` may also be the path of a store made by ``classicnets prepare``: its split is read into memory
    (training from a store streams from its shards instead: ``build_loaders``).
    """
    if store.is_store(name):
        return _store_dataset(Path(name), split)
    name = canonical_name(name)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', found {split!r}")
    if name == "synthetic":
        return make_synthetic(split)
    spec = SPECS[name]
    where = locate(spec, split, data_dir, download=download, mirrors=mirrors)
    if not verify:
        warnings.warn(
            f"{spec.name} {split} from {where} used without checksum and count checks", stacklevel=2
        )
    sources = _source_files(spec, split, where)
    key = {p.name: _sha256_file(p) for p in sources}
    cache = _cache_paths(spec, split, key, verify, cache_dir)
    if all(p.exists() for p in cache):
        images, labels, classes = (np.load(p) for p in cache)
    else:
        images, labels, classes = _parse(spec, split, where, verify)
        _write_cache(cache, (images, labels, np.asarray(classes, dtype=str)))
    return _to_dataset(images, labels, [str(c) for c in classes], spec.name, split, where, key)


def _store_dataset(root: Path, split: str) -> ArrayDataset:
    data = store.open_store(root, split)
    images = torch.from_numpy(np.concatenate(data.shards)).permute(0, 3, 1, 2)  # N x 3 x S x S
    return ArrayDataset(images, data.labels, data.classes, str(root), split, str(root))


def _to_dataset(images, labels, classes, name, split, where, key) -> ArrayDataset:
    images_t = torch.from_numpy(images)
    if images_t.ndim == 3:
        images_t = images_t.unsqueeze(1)  # grey: one channel
    return ArrayDataset(
        images_t,
        torch.from_numpy(labels.astype(np.int64, copy=False)),
        list(classes),
        name,
        split,
        str(where),
        key,
    )


# -------------------------------------------------------------------------------------- parsing + checks


def _parse(spec: DatasetSpec, split: str, where: Path, verify: bool):
    if spec.kind == "idx":
        images, labels = (
            _read_idx_verified(p, f, verify)
            for p, f in zip(_source_files(spec, split, where), spec.files[split], strict=True)
        )
        formats.check_images_labels(images, labels, len(spec.classes), f"{spec.name} {split} ({where})")
        classes = list(spec.classes)
    else:
        images, labels = _read_cifar_verified(spec, split, where, verify)
        classes = _read_classes(spec, where)
    expected = spec.counts[split]
    if verify and len(labels) != expected:
        raise DatasetError(
            f"{spec.name} {split} in {where} has {len(labels):,} images, expected {expected:,}. The files "
            "are incomplete or from another data set; delete them and download again (or pass verify=False)."
        )
    return images, labels, classes


def _read_idx_verified(path: Path, spec: FileSpec, verify: bool) -> np.ndarray:
    content = formats.read_bytes(path)
    if verify:
        _check_file(path, spec, content)
    return formats.read_idx(content, path)


def _check_file(path: Path, spec: FileSpec, content: bytes | None = None) -> None:
    """Pass if the stored file matches the published md5 or its content the recorded sha256; else stop."""
    sha = "(not computed)"
    if spec.content_sha256:  # first: it covers recompressed and uncompressed copies alike
        sha = hashlib.sha256(content if content is not None else formats.read_bytes(path)).hexdigest()
        if sha == spec.content_sha256:
            return
    raw = path.read_bytes()
    md5 = hashlib.md5(raw).hexdigest()
    if spec.md5 and md5 == spec.md5:
        return
    if not spec.md5 and not spec.content_sha256:
        warnings.warn(
            f"{path}: no published checksum to verify it against; its format and counts were checked",
            stacklevel=3,
        )
        return
    if spec.content_sha256 is None and not raw.startswith(b"\x1f\x8b") and spec.name.endswith(".gz"):
        # only the .gz file's md5 is published: an uncompressed copy cannot be compared; say so, go on
        warnings.warn(
            f"{path}: only the md5 of {spec.name} is published, so this uncompressed copy is "
            "checked for format and counts only",
            stacklevel=3,
        )
        return
    expected = " or ".join(
        x
        for x in (
            spec.md5 and f"md5 {spec.md5}",
            spec.content_sha256 and f"content sha256 {spec.content_sha256}",
        )
        if x
    )
    raise DatasetError(
        f"{path} fails its checksum: expected {expected}, found md5 {md5} and content sha256 {sha}. "
        "The file is damaged or not the expected release: delete it and download it again "
        "(or pass verify=False to use it as it is)."
    )


def _read_cifar_verified(spec: DatasetSpec, split: str, where: Path, verify: bool):
    names = [f.name for f in spec.files[split]]
    if verify and where.is_dir():
        for f in spec.files[split]:
            _check_file(where / spec.folder / f.name, f)
    elif verify:
        _check_file(where, spec.archive)
    members = formats.read_members(where, spec.folder, names)
    parts = [formats.read_cifar_batch(members[n], spec.label_key, f"{where}:{n}") for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_classes(spec: DatasetSpec, where: Path) -> list[str]:
    if spec.kind == "idx":
        return list(spec.classes)
    data = formats.read_members(where, spec.folder, [spec.meta.name])[spec.meta.name]
    return formats.read_cifar_meta(data, spec.names_key, f"{where}:{spec.meta.name}")


# ---------------------------------------------------------------------------------------- the cache


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    import platformdirs

    return Path(platformdirs.user_cache_dir("classicnets"))


def _cache_paths(spec, split, key: dict[str, str], verified: bool, cache_dir) -> tuple[Path, ...]:
    """Keyed by the sources' sha256: a changed file never meets a stale cache. Unverified reads are kept
    apart, so a later verified load still checks the files."""
    digest = hashlib.sha256("".join(f"{k}:{v};" for k, v in sorted(key.items())).encode()).hexdigest()[:20]
    folder = cache_root(cache_dir) / "parsed"
    stem = f"{spec.name}-{split}-{digest}" + ("" if verified else "-unverified")
    return tuple(folder / f"{stem}-{part}.npy" for part in ("images", "labels", "classes"))


def _write_cache(paths: tuple[Path, ...], arrays: tuple[np.ndarray, ...]) -> None:
    """Write the arrays atomically; a cache that cannot be written is reported and skipped."""
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path, array in zip(paths, arrays, strict=True):
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
                np.save(tmp, array)
            os.replace(tmp.name, path)
    except OSError as error:
        warnings.warn(
            f"cannot write the parsed-array cache in {paths[0].parent} ({error}); "
            f"set {ENV_CACHE} to a writable directory to load faster next time",
            stacklevel=3,
        )


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------------------- finding files


def _search_dirs(spec: DatasetSpec, data_dir) -> list[Path]:
    if data_dir is not None:
        check_data_dir(data_dir)
        bases = [Path(data_dir)]
    else:
        bases = [Path(os.environ[ENV_DATA])] if os.environ.get(ENV_DATA) else []
        bases += [cache_root() / "datasets", DEBIAN_ROOT]
    dirs = []
    for base in bases:
        dirs += [base, *(base / layout for layout in spec.layouts)]
    return dirs


def check_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path, refusing a URL and a path that exists but is not a folder (a file there
    would otherwise fail deep inside a download with "File exists")."""
    refuse_url(data_dir, "data_dir", DatasetError)
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        raise DatasetError(f"data_dir {path} is a file, not a folder; pass the folder that holds the "
                           "dataset's files (--data-dir DIR)")
    return path


def _download_dir(spec: DatasetSpec, data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    base = Path(os.environ[ENV_DATA]) if os.environ.get(ENV_DATA) else cache_root() / "datasets"
    return base / spec.layouts[0]


def _find_in(spec: DatasetSpec, split: str, folder: Path) -> Path | None:
    """The folder (idx, extracted cifar) or tarball (cifar) holding the split, if ``folder`` has it."""
    if spec.kind == "idx":
        return folder if all(_idx_path(folder, f) for f in spec.files[split]) else None
    if all((folder / spec.folder / f.name).is_file() for f in (*spec.files[split], spec.meta)):
        return folder
    if folder.name == spec.folder and all((folder / f.name).is_file() for f in spec.files[split]):
        return folder.parent
    tarball = folder / spec.archive.name
    return tarball if tarball.is_file() else None


def _idx_path(folder: Path, spec: FileSpec) -> Path | None:
    for name in (spec.name, spec.name.removesuffix(".gz")):
        if (folder / name).is_file():
            return folder / name
    return None


def _source_files(spec: DatasetSpec, split: str, where: Path) -> list[Path]:
    if spec.kind == "idx":
        return [_idx_path(where, f) for f in spec.files[split]]
    if where.is_dir():
        return [where / spec.folder / f.name for f in (*spec.files[split], spec.meta)]
    return [where]


def locate(spec: DatasetSpec, split: str, data_dir=None, *, download=True, mirrors=None) -> Path:
    """Where the split's files are, downloading them when allowed and nowhere else has them."""
    searched = _search_dirs(spec, data_dir)
    for folder in searched:
        found = _find_in(spec, split, folder)
        if found is not None:
            return found
    target = _download_dir(spec, data_dir)
    if not download:
        raise DatasetError(
            _missing_message(spec, split, searched, "downloading is turned off (download=False)")
        )
    wanted = [spec.archive] if spec.kind == "cifar" else list(spec.files[split])
    try:
        for file in wanted:
            if not (target / file.name).is_file():
                download_file(file, target, urls=spec.urls, mirrors=mirrors)
    except DatasetError as error:
        raise DatasetError(_missing_message(spec, split, searched, str(error))) from None
    found = _find_in(spec, split, target)
    assert found is not None, f"downloaded files not found in {target}"
    return found


def _missing_message(spec: DatasetSpec, split: str, searched: list[Path], why: str) -> str:
    if spec.kind == "cifar":
        files = f"{spec.archive.name} (or its extracted {spec.folder}/)"
    else:
        files = " and ".join(f.name for f in spec.files[split])
    ways = [
        f"put {files} in a directory and pass it with --data-dir (Python: data_dir=...)",
        f"or set {ENV_DATA} to a directory with a {spec.layouts[0]}/ folder holding them",
    ]
    if spec.debian_package:
        ways.append(
            f"or install it: apt-get install {spec.debian_package} (files land in {DEBIAN_ROOT / spec.name})"
        )
    ways.append(
        f"or download it (download=True, the default) where {spec.urls[0]} can be reached, "
        f"or from a mirror named in {ENV_MIRROR}"
    )
    shown = "\n  ".join(str(p) for p in searched)
    return (
        f"{spec.name} ({split}) not found; looked in:\n  {shown}\nand could not download it: {why}.\n"
        "To get it: " + "; ".join(ways) + "."
    )


# ---------------------------------------------------------------------------------------- downloading


def mirror_urls(spec_urls: tuple[str, ...], mirrors: list[str] | None) -> list[str]:
    """Base addresses to try: ``mirrors``, else $CLASSICNETS_DATA_MIRROR, else the canonical ones."""
    if mirrors:
        return list(mirrors)
    if os.environ.get(ENV_MIRROR):
        return [os.environ[ENV_MIRROR]]
    return list(spec_urls)


def download_file(
    file: FileSpec,
    target: Path,
    *,
    urls: tuple[str, ...],
    mirrors: list[str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``file`` into ``target`` from the first address that serves it with a good checksum.

    ``urls`` are the data set's canonical base addresses; ``mirrors`` (or $CLASSICNETS_DATA_MIRROR)
    replace them.
    """
    target.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in mirror_urls(urls, mirrors):
        url = base.rstrip("/") + "/" + file.name
        try:
            return _fetch_verified(url, file, target / file.name, timeout)
        except (OSError, urllib.error.URLError, DatasetError) as error:
            failures.append(f"{url}: {error}")
    raise DatasetError("every address failed:\n  " + "\n  ".join(failures))


def _fetch_verified(url: str, file: FileSpec, dest: Path, timeout: float) -> Path:
    print(f"classicnets: downloading {url} -> {dest}", file=sys.stderr)
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False)
    try:
        with tmp, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                tmp.write(chunk)
        _check_file(Path(tmp.name), file)
        os.replace(tmp.name, dest)
        return dest
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


# ---------------------------------------------------------------------------------------- synthetic


def make_synthetic(
    split: str = "train",
    *,
    size: int | None = None,
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 28,
    seed: int = 0,
) -> ArrayDataset:
    """A deterministic, learnable stand-in for Fashion-MNIST: each class a smooth random pattern, each image
    that pattern shifted by a few pixels plus noise. Same arguments, same bytes, on any machine."""
    size = size if size is not None else (2048 if split == "train" else 512)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 7, 7, generator=gen)
    patterns = torch.nn.functional.interpolate(coarse, size=image_size, mode="bicubic", align_corners=False)
    gen.manual_seed(seed * 2 + (1 if split == "train" else 2))  # the splits differ, the classes do not
    labels = torch.randperm(size, generator=gen) % num_classes
    shift = torch.randint(0, 25, (size,), generator=gen)  # one of 5 x 5 shifts of -2..2 pixels
    noise = torch.randn(size, channels, image_size, image_size, generator=gen)
    shifted = torch.stack(
        [patterns.roll((dy, dx), dims=(2, 3)) for dy in range(-2, 3) for dx in range(-2, 3)], 1
    )
    images = shifted[labels, shift]  # shifted: classes x 25 x C x H x W, small
    images = images * 200 + 25 + noise * 20
    images = images.clamp_(0, 255).round_().to(torch.uint8)
    classes = [f"pattern-{c}" for c in range(num_classes)]
    return ArrayDataset(images, labels.long(), classes, "synthetic", split, f"make_synthetic(seed={seed})")
