"""Registry entries of the EVP / VP benchmark and its usual companions (docs/DATASETS.md has the table).

CIFAR-10/100 (registered in :mod:`vprompt.data.datasets`) get CLIP's clean class names and prompt ensembles here;
Flowers102, Food101, EuroSAT, SUN397, SVHN, Oxford-IIIT Pets, DTD, CLEVR (count), GTSRB, Stanford Cars,
FGVC-Aircraft and Caltech101 are read by torchvision (:mod:`.benchmark_tv`); RESISC45, DMLab and UCF101 (middle
frames) by the Hugging Face ``datasets`` library or from a documented folder layout (:mod:`.benchmark_hf`).
Class names and templates are package data read on first use (:mod:`.benchmark_base`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import benchmark_tv as tv
from . import datasets as _core  # noqa: F401  (CIFAR must be registered before it is updated below)
from .benchmark_base import LazyList, classnames, name_key
from .benchmark_hf import HF_DEFAULTS, folder_splits, hub_or_folder_dataset
from .registry import DatasetSpec, get_dataset_spec, register_dataset

__all__ = ["BENCHMARK_DATASETS"]

#: The registry names added or updated by this module.
BENCHMARK_DATASETS = (
    "cifar10",
    "cifar100",
    "flowers102",
    "food101",
    "eurosat",
    "sun397",
    "svhn",
    "pets",
    "dtd",
    "resisc45",
    "clevr_count",
    "dmlab",
    "ucf101",
    "gtsrb",
    "cars",
    "aircraft",
    "caltech101",
)

_SPLIT_FILE = {"split_file": "the shipped seeded split (vprompt/data/split_files/<name>.npz); or PATH to your own .npz"}
_TRAIN_VAL_TEST = ("train", "val", "test")


def _register(name: str, builder: Callable[..., Any], description: str, n: int, **fields: Any) -> None:
    """Register ``name`` with ``n`` classes (the tests check ``n`` against the metadata, which is not read here)."""
    register_dataset(
        DatasetSpec(
            name=name,
            builder=builder,
            num_classes=n,
            classnames=LazyList(name, "classnames"),
            templates=LazyList(name, "templates"),
            description=description,
            **fields,
        )
    )


def _with_clip_names(name: str) -> None:
    """Give an already registered dataset the clean names and the ensemble of its metadata; the builder checks
    that its own names are the same classes in the same order."""
    base = get_dataset_spec(name)

    @functools.wraps(base.builder)
    def builder(**kwargs: Any) -> Any:
        ds = base.builder(**kwargs)
        names = classnames(name)
        if [name_key(c) for c in ds.classnames] != [name_key(c) for c in names]:
            raise ValueError(f"dataset {name}: class names {list(ds.classnames)[:3]}... differ from {names[:3]}...")
        ds.classnames = names
        return ds

    register_dataset(
        replace(base, builder=builder, classnames=LazyList(name, "classnames"), templates=LazyList(name, "templates"))
    )


_with_clip_names("cifar10")
_with_clip_names("cifar100")

_register(
    "flowers102",
    tv.flowers102,
    "Oxford Flowers-102, 102 classes, 1,020 / 1,020 / 6,149 train/val/test (torchvision; downloads) in DIR/flowers-102",
    n=102,
    splits=_TRAIN_VAL_TEST,
)
_register(
    "food101",
    tv.food101,
    "Food-101, 101 classes, 75,750 / 25,250 train/test (torchvision; downloads) in DIR/food-101",
    n=101,
)
_register(
    "eurosat",
    tv.eurosat,
    "EuroSAT RGB, 10 classes, 13,500 / 5,400 / 8,100 (shipped seeded split; torchvision; downloads) in DIR/eurosat",
    n=10,
    splits=_TRAIN_VAL_TEST,
    options=_SPLIT_FILE,
)
_register(
    "sun397",
    tv.sun397,
    "SUN397, 397 classes, 54,377 / 21,751 / 32,626 (shipped seeded split; torchvision; no download: files by hand "
    "in DIR/SUN397)",
    n=397,
    splits=_TRAIN_VAL_TEST,
    options=_SPLIT_FILE,
)
_register(
    "svhn",
    tv.svhn,
    "SVHN digits, 10 classes, 73,257 / 26,032 train/test, 32x32 in memory (torchvision; downloads) in DIR/svhn",
    n=10,
)
_register(
    "pets",
    tv.pets,
    "Oxford-IIIT Pets, 37 classes, 3,680 / 3,669 trainval/test (torchvision; downloads) in DIR/oxford-iiit-pet",
    n=37,
)
_register(
    "dtd",
    tv.dtd,
    "Describable Textures, 47 classes, 1,880 / 1,880 / 1,880 (partition 1; torchvision; downloads) in DIR/dtd",
    n=47,
    splits=_TRAIN_VAL_TEST,
    options={"partition": "1 (1..10)"},
)
_register(
    "clevr_count",
    tv.clevr_count,
    "CLEVR object count (VTAB), 8 classes (3-10 objects), 70,000 / 15,000 train/test (torchvision; downloads) "
    "in DIR/clevr",
    n=8,
)
_register(
    "gtsrb",
    tv.gtsrb,
    "GTSRB traffic signs, 43 classes, 26,640 / 12,630 train/test (torchvision; downloads) in DIR/gtsrb",
    n=43,
)
_register(
    "cars",
    tv.cars,
    "Stanford Cars, 196 classes, 8,144 / 8,041 train/test (torchvision; no download: files by hand in "
    "DIR/stanford_cars)",
    n=196,
)
_register(
    "aircraft",
    tv.aircraft,
    "FGVC-Aircraft variants, 100 classes, 3,334 / 3,333 / 3,333 (torchvision; downloads) in DIR/fgvc-aircraft-2013b",
    n=100,
    splits=_TRAIN_VAL_TEST,
)
_register(
    "caltech101",
    tv.caltech101,
    "Caltech101, 101 classes, 4,330 / 1,736 / 2,611 (shipped seeded split; torchvision; downloads) in DIR/caltech101",
    n=101,
    splits=_TRAIN_VAL_TEST,
    options=_SPLIT_FILE,
)

_HF_DESCRIPTIONS = {
    "resisc45": (
        "NWPU-RESISC45, 45 classes, 18,900 / 6,300 / 6,300 (Hugging Face timm/resisc45, extra [hf]) or DIR/resisc45",
        45,
    ),
    "dmlab": (
        "DMLab (VTAB), 6 classes, 65,550 / 22,628 / 22,735 (Hugging Face clip-benchmark/wds_vtab-dmlab: train and "
        "test, extra [hf]) or DIR/dmlab",
        6,
    ),
    "ucf101": (
        "UCF101 middle frames, 101 classes, 7,639 / 1,898 / 3,783 (CoOp's split) in DIR/ucf101, or a hub copy "
        "(hf_id=..., extra [hf])",
        101,
    ),
}
for _name, (_description, _n) in _HF_DESCRIPTIONS.items():
    _register(
        _name,
        functools.partial(hub_or_folder_dataset, _name),
        _description,
        n=_n,
        splits=_TRAIN_VAL_TEST,
        find_splits=lambda root, options, _name=_name: folder_splits(_name, root, **options),
        options={
            "source": "auto (DIR/<name> when it exists, else the hub), folder or hf",
            "hf_id": f"{HF_DEFAULTS[_name] or 'none'} (a hub id or a local folder of parquet files)",
        },
    )
