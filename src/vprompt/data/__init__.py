"""Datasets, splits and loaders.

``create_dataset(name, root, split)`` builds one split of a registered dataset; :func:`prepare_data` builds the
train / validation / test triple a run needs, with the validation split held out of the training data (seeded)
unless the dataset has an official one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataFileError
from . import benchmark as _benchmark  # noqa: F401  (registers the EVP/VP benchmark datasets)
from . import datasets as _core  # noqa: F401  (registers the core datasets)
from . import digits as _digits  # noqa: F401  (registers mnist and digits)
from . import shift as _shift  # noqa: F401  (registers the WILDS datasets and the shift sets)
from .base import ArrayDataset, FileDataset, LabeledSubset, build_transform, subset
from .loader import DeviceBatches, epoch_order, make_loader
from .registry import (
    DatasetNotFoundError,
    DatasetOptionError,
    DatasetSpec,
    MissingDependencyError,
    SplitNotFoundError,
    check_dataset,
    create_dataset,
    data_root,
    default_data_dir,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)
from .splits import holdout_split, subsample_per_class

__all__ = [
    "ArrayDataset",
    "FileDataset",
    "LabeledSubset",
    "DatasetSpec",
    "DatasetNotFoundError",
    "DatasetOptionError",
    "SplitNotFoundError",
    "MissingDependencyError",
    "DataSplits",
    "DeviceBatches",
    "build_transform",
    "create_dataset",
    "data_root",
    "default_data_dir",
    "epoch_order",
    "get_dataset_spec",
    "check_dataset",
    "holdout_split",
    "no_validation_reason",
    "list_datasets",
    "make_loader",
    "prepare_data",
    "register_dataset",
    "subset",
    "subsample_per_class",
]

_log = logging.getLogger(__name__)


@dataclass
class DataSplits:
    """The data of one run.

    Attributes:
        train: what the prompt is trained on (None where only the test split was asked for).
        val: what selects the best epoch (None when ``val_fraction`` is 0: the last epoch is selected).
        test: reported only (None where only the training files were asked for).
        classnames: target class names.
        templates: the dataset's own prompt ensemble, if any.
        val_source: ``official``, ``holdout`` or ``none``.
        split_indices: indices into the official train split, per part (``train``, ``val``), for the run folder.
    """

    train: Dataset | None
    val: Dataset | None
    test: Dataset | None
    classnames: list[str]
    templates: Sequence[str] | None = None
    val_source: str = "holdout"
    split_indices: dict[str, list[int]] = field(default_factory=dict)

    @property
    def parts(self) -> dict[str, Dataset]:
        """The splits this run has, by name (``train``, ``val``, ``test``)."""
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None}


def no_validation_reason(val_fraction: float) -> str:
    """Why a run held no validation split out of its training data (where the dataset has no official one)."""
    return "--val-fraction 0" if not val_fraction else "no class has 2 training images to hold one out"


def _check_split(part: Dataset, where: str, split: str) -> None:
    """A split to run on has images, at least 2 classes, and a label that names one of them for every image (a
    list file or folder of another class would otherwise fail mid-epoch), or an error naming the first image."""
    if not len(part):  # (no accuracy of no image; no prompt learned from none)
        raise DatasetNotFoundError(f"{where}: its {split} split has no images; add its files")
    names = list(part.classnames)
    if len(names) < 2:
        raise ValueError(f"{where}: its {split} split has {len(names)} class {names}; a classifier needs at least 2")
    labels = torch.as_tensor(part.targets, dtype=torch.long)
    bad = ((labels < 0) | (labels >= len(names))).nonzero().flatten().tolist()
    if bad:
        first = bad[0]
        source = part.samples[first][0] if isinstance(part, FileDataset) else None
        image = f"{source}" if isinstance(source, (str, Path)) else f"image {first}"
        raise DataFileError(
            f"{where}: {len(bad)} {split} image(s) with a label outside its {len(names)} classes (0..{len(names) - 1}),"
            f" the first {image} with label {int(labels[first])}; fix or remove what names that class"
        )


def prepare_data(
    name: str,
    root: str | Path | None = None,
    image_size: int = 224,
    *,
    random_crop: bool = True,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    options: dict[str, Any] | None = None,
    shots: int | None = None,
    train_fraction: float | None = None,
    read: str = "all",
) -> DataSplits:
    """Build train / val / test for a run; ``read="test"`` reads only the test files, ``read="train"`` only the
    training files (train and val: the test split is then None).

    Args:
        name: registered dataset name.
        root: data folder.
        image_size: the prompter's image size; file datasets are resized to it when decoded.
        random_crop: random (vs center) crop when decoding training images.
        val_fraction: share of the training data held out for validation when there is no official split; 0 uses
            no validation split at all, not even an official one (the last epoch is selected).
        split_seed: seed of the held-out split (independent of the training seed).
        download: fetch missing files where possible.
        options: dataset-specific builder options.
        shots: keep exactly this many training images per class (few-shot), drawn after the validation split is
            held out (so disjoint from it) by a generator seeded from ``split_seed`` alone. The validation split
            itself stays as it is (``val_fraction`` of the full training set, or the official one): it only
            selects the epoch; ``val_fraction=0`` selects the last epoch for a strictly K-shot protocol.
        train_fraction: keep this share of each class instead (at least one image per class).
    """
    spec = get_dataset_spec(name)
    root = data_root(root)
    if root.is_file():
        raise FileNotFoundError(f"--data-dir {root} is a file; give the folder that holds the dataset's files")
    options = dict(options or {})
    eval_tf = build_transform(image_size, random_crop=False)
    train_tf = build_transform(image_size, random_crop=random_crop)

    def make(split: str, tf: Any) -> Dataset:
        return create_dataset(name, root, split, transform=tf, download=download, **options)

    if read not in ("all", "test", "train"):
        raise ValueError(f"read={read!r}: choose from all, test, train")
    train_full = None if read == "test" else make("train", train_tf)
    test = None if read == "train" else make("test", eval_tf)
    where = f"dataset {name} in {root}"
    for split, part in (("train", train_full), ("test", test)):
        if part is not None:
            _check_split(part, where, split)
    if isinstance(train_full, ArrayDataset) and isinstance(test, ArrayDataset):
        sides = ["x".join(map(str, part.images.shape[-2:])) for part in (train_full, test)]
        if sides[0] != sides[1]:  # (files of two datasets: each split is resized to the input size on its own)
            _log.warning(
                "%s: the training images are %s pixels and the test images %s: each is resized to the model's input "
                "on its own, so the two are not drawn at one scale; check that both are of one dataset", where, *sides,
            )  # fmt: skip
    if train_full is None:
        assert test is not None
        return DataSplits(None, None, test, list(test.classnames), spec.templates, "none")
    classnames = list(train_full.classnames)
    targets = torch.as_tensor(train_full.targets, dtype=torch.long)
    counts = torch.bincount(targets, minlength=len(classnames))
    empty = [classnames[c] for c in range(len(classnames)) if counts[c] == 0]
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 6 else ""
        _log.warning(
            "%s: no training image of %d class(es), %s%s: the prompt never learns them (add images of them, or remove "
            "them)", where, len(empty), ", ".join(map(repr, empty[: 5 if more else 6])), more,
        )  # fmt: skip
    all_idx = list(range(len(train_full)))
    val: Dataset | None = None
    if val_fraction > 0 and "val" in spec.available_splits(root, options):
        try:
            val = make("val", eval_tf)
        except SplitNotFoundError as e:  # a copy (hf_id=...) that turns out to have no validation split
            _log.warning("%s: no official validation split (%s); holding one out of the training data", name, e)
    if val is not None and not len(val):  # (an empty val.txt, a hub copy's 0-row split): it would select epoch 1
        _log.warning("%s: the official validation split is empty; holding one out of the training data", name)
        val = None
    if val is not None:
        _check_split(val, where, "val")
        _log.info("%s: using the official validation split", name)
        train_idx, val_idx, val_source = all_idx, [], "official"
    else:
        train_idx, val_idx = holdout_split(targets, val_fraction, split_seed)
        val_source = "holdout" if val_idx else "none"
        if not val_idx:
            why = no_validation_reason(val_fraction)
            _log.warning("%s: no validation split (%s): a training run keeps its last epoch", name, why)
        # File datasets decode validation images without the training crop, so they need their own instance.
        val_parent = train_full if isinstance(train_full, ArrayDataset) else make("train", eval_tf)
        val = subset(val_parent, val_idx) if val_idx else None
    if shots is not None or train_fraction is not None:
        # Drawn from what is left after the validation split, so the two are disjoint by construction.
        kept, held = (targets[torch.as_tensor(idx, dtype=torch.long)] for idx in (train_idx, val_idx))
        pos = subsample_per_class(kept, split_seed, shots, train_fraction, len(classnames), classnames, held)
        _log.info(
            "%s: training on %d of %d images (%s, split seed %d)", name, len(pos), len(train_idx),
            f"{shots} per class" if shots is not None else f"{train_fraction:g} of each class", split_seed,
        )  # fmt: skip
        train_idx = [train_idx[p] for p in pos]
    whole = train_idx == all_idx
    indices = {k: v for k, v in (("train", [] if whole else train_idx), ("val", val_idx)) if v}
    train = train_full if whole else subset(train_full, train_idx)
    return DataSplits(train, val, test, classnames, spec.templates, val_source, indices)
