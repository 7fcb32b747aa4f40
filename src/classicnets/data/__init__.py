"""Data sets and loaders: readers for the real formats, where the files live, device-side batch transforms.

>>> from classicnets.data import load_dataset, build_loaders
>>> train = load_dataset("fashion-mnist", "train")          # ArrayDataset: uint8 (60000, 1, 28, 28)
>>> loaders = build_loaders("fashion-mnist", image_size=224, batch_size=128, normalize=False)
>>> x, y = next(iter(loaders.train))                          # float32 (128, 1, 224, 224), int64 (128,)
"""

from .augment import AUGMENTS, ColourPCA, pre_crop_size
from .formats import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from .loaders import (
    DeviceLoader,
    Loaders,
    StoreLoader,
    StreamingLoader,
    build_loaders,
    folder_eval_loader,
    image_folder_root,
)
from .prepare import prepare
from .sources import DATASETS, ArrayDataset, load_dataset, make_synthetic
from .store import is_store, open_store

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "ColourPCA",
    "DeviceLoader",
    "Loaders",
    "StoreLoader",
    "StreamingLoader",
    "build_loaders",
    "folder_eval_loader",
    "image_folder_root",
    "is_store",
    "load_dataset",
    "make_synthetic",
    "open_store",
    "pre_crop_size",
    "prepare",
]
