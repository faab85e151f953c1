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

from torch.utils.data import Dataset

from . import benchmark as _benchmark  # noqa: F401  (registers the EVP/VP benchmark datasets)
from . import datasets as _core  # noqa: F401  (registers the core datasets)
from .base import ArrayDataset, FileDataset, LabeledSubset, build_transform, subset
from .loader import DeviceBatches, epoch_order, make_loader
from .registry import (
    DatasetNotFoundError,
    DatasetSpec,
    create_dataset,
    default_data_dir,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)
from .splits import holdout_split

__all__ = [
    "ArrayDataset",
    "FileDataset",
    "LabeledSubset",
    "DatasetSpec",
    "DatasetNotFoundError",
    "DataSplits",
    "DeviceBatches",
    "build_transform",
    "create_dataset",
    "default_data_dir",
    "epoch_order",
    "get_dataset_spec",
    "holdout_split",
    "list_datasets",
    "make_loader",
    "prepare_data",
    "register_dataset",
    "subset",
]

_log = logging.getLogger(__name__)


@dataclass
class DataSplits:
    """The data of one run.

    Attributes:
        train: what the prompt is trained on.
        val: what selects the best epoch (None when ``val_fraction`` is 0 and there is no official split).
        test: reported only.
        classnames: target class names.
        templates: the dataset's own prompt ensemble, if any.
        val_source: ``official``, ``holdout`` or ``none``.
        split_indices: indices into the official train split, per part (``train``, ``val``), for the run folder.
    """

    train: Dataset
    val: Dataset | None
    test: Dataset
    classnames: list[str]
    templates: Sequence[str] | None = None
    val_source: str = "holdout"
    split_indices: dict[str, list[int]] = field(default_factory=dict)


def prepare_data(
    name: str,
    root: str | Path | None = None,
    image_size: int = 224,
    random_crop: bool = True,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    test_split: str = "test",
    options: dict[str, Any] | None = None,
) -> DataSplits:
    """Build train / val / test for a run.

    Args:
        name: registered dataset name.
        root: data folder.
        image_size: the prompter's image size; file datasets are resized to it when decoded.
        random_crop: random (vs center) crop when decoding training images.
        val_fraction: share of the training data held out for validation when there is no official split.
        split_seed: seed of the held-out split (independent of the training seed).
        download: fetch missing files where possible.
        test_split: the split reported as test.
        options: dataset-specific builder options.
    """
    spec = get_dataset_spec(name)
    root = Path(root).expanduser() if root is not None else default_data_dir()
    options = dict(options or {})
    eval_tf = build_transform(image_size, random_crop=False)
    train_tf = build_transform(image_size, random_crop=random_crop)

    def make(split: str, tf: Any) -> Dataset:
        return create_dataset(name, root, split, transform=tf, download=download, **options)

    train_full = make("train", train_tf)
    test = make(test_split, eval_tf)
    if "val" in spec.available_splits(root):
        _log.info("%s: using the official validation split", name)
        return DataSplits(
            train_full, make("val", eval_tf), test, list(train_full.classnames), spec.templates, "official"
        )
    train_idx, val_idx = holdout_split(train_full.targets, val_fraction, split_seed)
    if not val_idx:
        _log.warning("%s: no validation split (--val-fraction 0): the last epoch is selected", name)
        return DataSplits(train_full, None, test, list(train_full.classnames), spec.templates, "none")
    # File datasets decode validation images without the training crop, so they need their own instance.
    val_parent = train_full if isinstance(train_full, ArrayDataset) else make("train", eval_tf)
    return DataSplits(
        subset(train_full, train_idx),
        subset(val_parent, val_idx),
        test,
        list(train_full.classnames),
        spec.templates,
        "holdout",
        {"train": train_idx, "val": val_idx},
    )
