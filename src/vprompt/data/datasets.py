"""Core datasets: CIFAR-10/100 (torchvision), a user's image folder, and a synthetic set for tests and demos."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFileError
from .base import ArrayDataset, FileDataset
from .registry import DatasetNotFoundError, DatasetSpec, register_dataset, whole_option

__all__ = ["synthetic_dataset", "cifar_dataset", "image_folder_dataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def synthetic_dataset(
    root: Path | None = None,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    num_classes: int = 10,
    size: int = 32,
    n_train: int = 500,
    n_test: int = 200,
    seed: int = 0,
) -> ArrayDataset:
    """A small learnable task: each class is a colored square of its own color and rough size on a noisy
    background, at a random position. Deterministic for a given seed and split; needs no files."""
    num_classes, n_train, n_test = (
        whole_option("synthetic", k, v, 1)
        for k, v in (("num_classes", num_classes), ("n_train", n_train), ("n_test", n_test))
    )
    size, seed = whole_option("synthetic", "size", size, 2), whole_option("synthetic", "seed", seed, 0)
    n = n_train if split == "train" else n_test
    palette = np.random.default_rng(seed).uniform(0.1, 0.9, size=(num_classes, 3))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, num_classes, size=n)
    imgs = rng.normal(0.5, 0.15, size=(n, size, size, 3))
    for i, y in enumerate(labels):
        side = int(size * (0.35 + 0.3 * (y % 3) / 2)) + int(rng.integers(-2, 3))
        side = max(2, min(size, side))
        top, left = rng.integers(0, size - side + 1, size=2)
        imgs[i, top : top + side, left : left + side] = palette[y] + rng.normal(0, 0.05, size=(side, side, 3))
    images = (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)
    return ArrayDataset(images, labels, [f"class {k}" for k in range(num_classes)])


register_dataset(
    DatasetSpec(
        name="synthetic",
        builder=synthetic_dataset,
        description="colored squares on noise, 10 classes, 32x32, generated (tests and demos; no files)",
        options={"num_classes": "10", "size": "32", "n_train": "500", "n_test": "200", "seed": "0"},
        reads_files=False,
    )
)


def _missing(name: str, folder: Path, hint: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"dataset {name}: files not found under {folder} ({hint})")


def cifar_dataset(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    classes: int = 10,
) -> ArrayDataset:
    """CIFAR-10 / CIFAR-100 through torchvision, held in memory (the python-pickle release, read by torchvision).

    Files live in ``root`` as torchvision lays them out (``cifar-10-batches-py/``, ``cifar-100-python/``).
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    name = f"cifar{classes}"
    try:
        ds = cls(root=str(root), train=split == "train", download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (a file missing or failing its MD5)
        folder = Path(root) / cls.base_folder
        if folder.is_dir():
            raise DatasetNotFoundError(
                f"dataset {name}: {folder} is incomplete or corrupt (a file is missing or fails torchvision's MD5 "
                "check); delete it and download again, or copy the files of the python release there"
            ) from e
        raise _missing(
            name,
            root,
            f"expected {folder}/ as in the python release; pass --data-dir to the folder holding it, or "
            "allow the download",
        ) from e
    except OSError as e:  # no network
        raise _missing(name, root, f"the download failed: {e}; copy the files there and retry") from e
    return ArrayDataset(ds.data, ds.targets, ds.classes)


for _k in (10, 100):
    register_dataset(
        DatasetSpec(
            name=f"cifar{_k}",
            builder=lambda k=_k, **kw: cifar_dataset(classes=k, **kw),
            num_classes=_k,
            description=f"CIFAR-{_k}, 50,000 train / 10,000 test, 32x32 (torchvision; downloads)",
        )
    )


def _hidden(name: str) -> bool:  # .ipynb_checkpoints/, macOS's ._x.png: no classes or images
    return name.startswith(".")


def class_folders(folder: Path) -> list[Path]:
    """The class folders in ``folder``, sorted by name, without hidden ones."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _walk_images(folder: Path) -> Iterator[Path]:
    """The image files under ``folder`` (at any depth, through linked folders too; none when it does not exist),
    in the order found, without hidden files or files in hidden folders. A broken link named like an image is an
    error: skipped, it would shrink the data without a word."""
    seen = set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree: walked once
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for f in files:
            path = Path(here, f)
            if _hidden(f) or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.is_file():
                yield path
            elif not path.exists():  # (listed, so a link whose target is gone)
                raise DataFileError(
                    f"{path}: a link to {os.readlink(path)}, which is not there: restore its target, or remove the link"
                )


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted (see :func:`_walk_images`)."""
    return sorted(_walk_images(folder))


def holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (told at the first, without walking the rest)."""
    return next(_walk_images(folder), None) is not None


def image_folder_dataset(
    root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False
) -> FileDataset:
    """A user's own data: ``root/<split>/<class name>/<image>``. The classes are the class folders of all the
    splits (sorted names), so a label means the same class in every split even when a split lacks a class."""
    folder = Path(root) / split
    if not folder.is_dir():
        have = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise DatasetNotFoundError(
            f"dataset imagefolder: no folder {folder} (--data-dir must hold train/ and test/ subfolders with one "
            f"folder per class{'; it has: ' + ', '.join(have) if have else ''})"
        )

    if not class_folders(folder):
        raise DatasetNotFoundError(f"dataset imagefolder: {folder} has no class subfolders")
    splits = [Path(root) / s for s in _image_folder_splits(Path(root))]
    classes = sorted({p.name for s in splits for p in class_folders(s)})
    empty = [c for c in classes if not any(holds_images(s / c) for s in splits)]
    if empty:  # (a class no image is of: the head would predict it, and no split could tell)
        where = ", ".join(str(s.relative_to(root) / c) for c in empty[:3] for s in splits if (s / c).is_dir())
        raise DatasetNotFoundError(
            f"dataset imagefolder: class folder(s) {', '.join(map(repr, empty))} hold no image in any split "
            f"({where}{', ...' if len(empty) > 3 else ''}) under {root}: add their images, or remove the folders"
        )
    samples = [(str(f), label) for label, c in enumerate(classes) for f in image_files(folder / c)]
    if not samples:
        raise DatasetNotFoundError(f"dataset imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return FileDataset(samples, classes, transform)


def _image_folder_splits(root: Path) -> tuple[str, ...]:
    """The splits of an image folder: train/ and test/ where they are, val/ where it holds images (an empty one is no
    split: validation is then held out of train)."""
    return tuple(s for s in ("train", "val", "test") if (root / s).is_dir() and (s != "val" or holds_images(root / s)))


register_dataset(
    DatasetSpec(
        name="imagefolder",
        builder=image_folder_dataset,
        splits=("train", "val", "test"),
        find_splits=lambda root, _options: _image_folder_splits(Path(root)),
        description="your own images: --data-dir DIR with DIR/{train,test[,val]}/<class>/<image>",
    )
)
