"""Readers for the on-disk formats: IDX (MNIST, Fashion-MNIST), CIFAR python batches, image folders.

Bytes in, arrays out. Every reader checks what it reads (magic numbers, sizes, counts, types) and raises
:class:`classicnets.errors.DatasetError` naming the file, what was expected, what was found and what to do.
Nothing here knows where a data set lives or how to download it: that is ``sources.py``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError

# ---------------------------------------------------------------------------------------------------- IDX

# IDX type byte -> numpy dtype (all multi-byte types are big-endian), from the MNIST page's format notes
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it is gzip (detected by its magic bytes, not its name)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from error
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DatasetError(
            f"{path} is a damaged gzip file ({error}); it was probably cut short while downloading or "
            "copying. Delete it and download it again."
        ) from error


def read_idx(data: bytes, origin: str | Path = "<bytes>") -> np.ndarray:
    """Parse one IDX file (decompressed): magic 0x0000TTDD, DD big-endian dimensions, then the data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or not 1 <= data[3] <= 4:
        raise DatasetError(
            f"{origin} is not an IDX file: expected the magic 0x0000TTDD (TT a type code such as 0x08, "
            f"DD = 1..4 dimensions), found 0x{data[:4].hex() or 'empty'}. Check that the path points at an "
            "MNIST-style images/labels file and that it is not an HTML error page saved by a failed download."
        )
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{origin} is truncated inside its header ({len(data)} of {header} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DatasetError(
            f"{origin} is {what}: its header declares shape {shape} ({expected:,} bytes of data), "
            f"found {found:,} bytes. Delete the file and download it again."
        )
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)
    # one copy: native byte order and a writable buffer, so torch.from_numpy can share it later
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz or ``compress`` says so)."""
    codes = {v.newbyteorder(">") if v.itemsize > 1 else v: k for k, v in _IDX_TYPES.items()}
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    code = codes[big.dtype]
    payload = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + big.tobytes()
    compress = str(path).endswith(".gz") if compress is None else compress
    Path(path).write_bytes(gzip.compress(payload, mtime=0) if compress else payload)


def check_images_labels(images: np.ndarray, labels: np.ndarray, num_classes: int, origin: str) -> None:
    """Images (N, H, W) and labels (N,) that belong together: same N, labels in range."""
    if images.ndim != 3:
        raise DatasetError(
            f"{origin}: the images file should hold (N, H, W) images, found shape {images.shape}."
        )
    if labels.ndim != 1:
        raise DatasetError(f"{origin}: the labels file should hold (N,) labels, found shape {labels.shape}.")
    if len(images) != len(labels):
        raise DatasetError(
            f"{origin}: {len(images):,} images but {len(labels):,} labels. The two files come from "
            "different releases or one is damaged: download both again."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{origin}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}."
        )


# ---------------------------------------------------------------------------------------------- CIFAR


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; load only dicts, lists, strings and numpy arrays, never arbitrary code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = module.replace("numpy.core.", "numpy._core.")  # the real files predate numpy 2
        return super().find_class(module, name)


def _unpickle(data: bytes, origin: str) -> dict:
    try:
        content = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # any unpickling failure means the same thing to the user
        raise DatasetError(
            f"{origin} is not a CIFAR python batch ({type(error).__name__}: {error}). Use the "
            "'python version' archive (cifar-10-python.tar.gz / cifar-100-python.tar.gz), not the binary one."
        ) from error
    if not isinstance(content, dict):
        raise DatasetError(f"{origin}: a CIFAR batch is a pickled dict, found {type(content).__name__}.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def read_cifar_batch(data: bytes, label_key: str, origin: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    content = _unpickle(data, origin)
    missing = {"data", label_key} - set(content)
    if missing:
        raise DatasetError(
            f"{origin}: a CIFAR batch needs the keys 'data' and {label_key!r}; missing {sorted(missing)} "
            f"(found {sorted(content)}). A CIFAR-10 batch has 'labels', a CIFAR-100 one 'fine_labels'."
        )
    images = np.asarray(content["data"])
    labels = np.asarray(content[label_key], dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{origin}: 'data' should be uint8 of shape (N, 3072), found {images.dtype} {images.shape}."
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{origin}: {len(images):,} images but {len(labels):,} labels; the file is damaged."
        )
    return images.reshape(-1, 3, 32, 32), labels


def read_cifar_meta(data: bytes, names_key: str, origin: str = "<bytes>") -> list[str]:
    """Class names from batches.meta (key 'label_names') or meta (key 'fine_label_names')."""
    content = _unpickle(data, origin)
    if names_key not in content:
        raise DatasetError(f"{origin}: expected the key {names_key!r}, found {sorted(content)}.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in content[names_key]]


def read_members(source: Path, folder: str, names: Iterable[str]) -> dict[str, bytes]:
    """Files ``folder/name`` from a tarball or an extracted directory, as bytes."""
    names = list(names)
    if Path(source).is_dir():
        out = {}
        for name in names:
            path = Path(source) / folder / name
            if not path.exists():
                raise DatasetError(f"{source} lacks {folder}/{name}; the extracted archive is incomplete.")
            out[name] = path.read_bytes()
        return out
    wanted = {f"{folder}/{name}": name for name in names}
    out = {}
    try:
        # one pass in archive order: a gzipped tar cannot seek backwards without decompressing again
        with tarfile.open(source) as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    out[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DatasetError(
            f"{source} is not a readable tar archive ({error}); it may be cut short. "
            "Delete it and download it again."
        ) from error
    missing = [name for name in names if name not in out]
    if missing:
        raise DatasetError(
            f"{source} lacks {', '.join(f'{folder}/{m}' for m in missing)}; it is not the expected archive."
        )
    return out


# --------------------------------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")

# About 8,000 x 11,000: larger than any photo a classifier needs, far smaller than a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass
class FolderScan:
    """An image folder listed: one sub-folder per class, classes sorted by name (torchvision's order)."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)

    def __len__(self) -> int:
        return len(self.paths)


def scan_image_folder(root: Path, *, on_bad: str = "skip") -> FolderScan:
    """List ``root/<class>/<image>``. Files without an image extension are skipped and counted, or stop the
    scan when ``on_bad="error"``. An empty class folder always stops it: its class could never be learnt."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; expected {root}/<class name>/<image files>.")
    try:
        return _scan(root, on_bad)
    except PermissionError as error:  # os.scandir's error names the folder it could not list
        raise DatasetError(f"cannot read {error.filename or root}: permission denied. Give this user read "
                           f"access (e.g. chmod -R u+rX {root}) or copy the images somewhere readable."
                           ) from None


def _scan(root: Path, on_bad: str) -> FolderScan:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"image folder {root} has no class sub-folders; expected one folder per class holding its images "
            f"({root}/cat/1.jpg, {root}/dog/2.png, ...)."
        )
    scan = FolderScan(root, [], [], [d.name for d in class_dirs])
    for label, class_dir in enumerate(class_dirs):
        found = 0
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                scan.paths.append(path)
                scan.labels.append(label)
                found += 1
            elif on_bad == "error":
                raise DatasetError(
                    f"{path} is not an image (extensions read: {', '.join(IMAGE_EXTENSIONS)}). Remove it, "
                    "or skip and count such files: --on-bad skip (Python: on_bad='skip')."
                )
            else:
                scan.skipped.append((path, "not an image file extension"))
        if found == 0 and not os.access(class_dir, os.R_OK | os.X_OK):
            # pathlib's rglob skips a folder it may not list, which would read as an empty class
            raise DatasetError(f"cannot read {class_dir}: permission denied. Give this user read access "
                               f"(e.g. chmod -R u+rX {root}) or copy the images somewhere readable.")
        if found == 0:
            raise DatasetError(
                f"class folder {class_dir} holds no images; every class needs at least one. "
                "Remove the folder or add its images."
            )
    return scan


TEST_SPLIT_NAMES = ("val", "test")  # the held-out split's folder, first found wins


def split_dir(root: Path, names: tuple[str, ...]) -> Path:
    """``root/<name>`` for the first of ``names`` that exists; a clear error when none does."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"image folder {root} is a file, not a folder; pass the folder that holds "
                           "train/ and val/ (or test/)")
    for name in names:
        if (root / name).is_dir():
            return root / name
    if not root.exists():
        raise DatasetError(f"image folder {root} does not exist; pass --dataset with a folder that holds "
                           f"train/<class>/<images> and val/<class>/<images>, or a named dataset "
                           f"(fashion-mnist, mnist, cifar10, ...)")
    raise DatasetError(
        f"image folder {root} has no {' or '.join(f'{n}/' for n in names)} sub-folder; expected "
        f"{root}/train/<class>/<images> and {root}/val/<class>/<images> (or test/)."
    )


def scan_splits(root: Path, *, on_bad: str = "skip") -> tuple[FolderScan, FolderScan]:
    """The train/ and val/ (or test/) scans of an image folder, which must hold the same class folders."""
    train = scan_image_folder(split_dir(root, ("train",)), on_bad=on_bad)
    test = scan_image_folder(split_dir(root, TEST_SPLIT_NAMES), on_bad=on_bad)
    if test.classes != train.classes:
        raise DatasetError(
            f"{root}: train/ and {test.root.name}/ have different class folders "
            f"(only in train: {sorted(set(train.classes) - set(test.classes))}, "
            f"only in {test.root.name}: {sorted(set(test.classes) - set(train.classes))})"
        )
    return train, test


# Pillow's modes for more than 8 bits a pixel: 16-bit grey PNG and TIFF open as I;16*, 16-bit PGM as I.
# Pillow's own convert("L"/"RGB") clips them at 255 (every value above 255 white: a black-and-white image).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(
    path: Path, *, mode: str = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
):
    """Open an image file as an 8-bit ``mode`` ("RGB" or "L") PIL image: the one decoding of every image
    classicnets reads (training folders, evaluation, predict). See :func:`as_8bit` for the conversion.

    The size is checked from the header before any pixel is decoded, so a decompression bomb (a small file
    that expands to gigabytes) is refused without using the memory. ``draft``: a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale as long as both sides stay at least this size (much faster for large photos).
    """
    from PIL import Image, ImageOps

    if Path(path).exists() and not Path(path).is_file():
        # a named pipe would block open() until something writes to it; a device could be endless
        raise DatasetError(f"{path} is not a regular file (a folder, pipe or device); pass an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                image.close()  # refused unread: its file handle goes now, not at garbage collection
                raise DatasetError(
                    f"{path} is {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,} (a decompression-bomb guard). Resize it, or raise the limit: "
                    "--max-pixels N when training (Python: max_pixels=N)."
                )
            if draft is not None:
                image.draft(None, draft)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_8bit(image, mode)
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DatasetError(f"{path}: refused as a possible decompression bomb ({error}).") from error
    except FileNotFoundError as error:
        raise DatasetError(f"{path} does not exist.") from error
    except (OSError, SyntaxError, ValueError) as error:  # what Pillow raises for unreadable images
        raise DatasetError(f"{path} is not an image Pillow can read ({error}).") from error


def as_8bit(image, mode: str = "RGB"):
    """A PIL image as :func:`decode_image` delivers it: upright (its EXIF orientation applied, as phone
    photos need), in ``mode`` with 8 bits a channel. Grey, palette, RGBA and CMYK are converted by Pillow;
    16-bit grey (I;16, I) is scaled to 8 bits (value >> 8, so 257 * v comes back as v), where Pillow's
    conversion would clip it."""
    from PIL import ImageOps

    return _to_8bit(ImageOps.exif_transpose(image), mode)


def _to_8bit(image, mode: str):
    from PIL import Image

    if image.mode in HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image).astype(np.int64, copy=False)  # uint16 (either byte order) or int32
        image = Image.fromarray((values.clip(0, 65535) >> 8).astype(np.uint8))  # mode L
    return image if image.mode == mode else image.convert(mode)


def decode_square(path: Path, size: int, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The paper's preparation of one image as uint8 (size, size, 3): shorter side to ``size``, centre square,
    in one bilinear resample (JPEGs first decoded at reduced scale where both sides stay >= ``size``).

    The one home of this step: the streaming folder loader and ``classicnets prepare`` both call it, so a
    prepared store holds bit for bit what the folder path decodes."""
    from PIL import Image

    image = decode_image(path, max_pixels=max_pixels, draft=(size, size))
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    square = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(square)
