"""The dataset registry: one name per dataset, one builder per name.

A builder is called as ``builder(root=Path, split=str, transform=callable|None, download=bool, **options)`` and
returns a dataset with ``targets`` and ``classnames`` (see :mod:`vprompt.data.base`). ``root`` is the data folder
given by ``--data-dir``; each builder decides where under it its files live and says so in its errors.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import did_you_mean

__all__ = [
    "DatasetSpec",
    "register_dataset",
    "create_dataset",
    "get_dataset_spec",
    "check_dataset",
    "list_datasets",
    "data_root",
    "default_data_dir",
    "DatasetNotFoundError",
    "SplitNotFoundError",
    "MissingDependencyError",
    "whole_option",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they should be (and could not be downloaded)."""


class DatasetOptionError(ValueError):
    """A dataset option's value is not one the dataset takes; ``key`` names the option."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # as a suite worker sends it back: with its key
        return type(self), (str(self), self.key)


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed (a ValueError too, so the CLI prints it as one line)."""


class SplitNotFoundError(DatasetNotFoundError):
    """The dataset's copy is there but has no such split (a hub copy without a validation split)."""


def whole_option(dataset: str, key: str, value: Any, least: int, most: int | None = None) -> int:
    """``--dataset-option key=value`` of ``dataset`` as an int in [least, most], or a ValueError naming it. A
    string of digits (as a config file may hold) is taken; a bool, a fraction or anything else is not."""
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if (
        isinstance(number, bool)
        or not isinstance(number, int)
        or number < least
        or (most is not None and number > most)
    ):
        span = f">= {least}" if most is None else f"from {least} to {most}"
        raise DatasetOptionError(
            f"dataset {dataset}: --dataset-option {key}={value!r} must be a whole number {span}", key
        )
    return number


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset.

    Attributes:
        name: registry name (``--dataset``).
        builder: see the module doc.
        splits: the official splits. Without an official ``val``, validation is held out of ``train``.
        num_classes: number of classes (None when it depends on the data, as for a user's image folder).
        classnames: class names when fixed (otherwise the dataset object carries them).
        templates: the dataset's own CLIP prompt ensemble, if the literature has one.
        description: one line for ``vprompt list datasets``.
        options: extra keyword options the builder accepts, each with a keyword default in the builder's signature
            (the values: documentation for the CLI).
        find_splits: for datasets whose splits depend on the files (a user's folder), ``(root, options) -> splits``.
        reads_files: False for a dataset that ignores the data folder (one shipped inside a package).
    """

    name: str
    builder: Callable[..., Dataset]
    splits: tuple[str, ...] = ("train", "test")
    num_classes: int | None = None
    classnames: Sequence[str] | None = None
    templates: Sequence[str] | None = None
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)
    find_splits: Callable[[Path, dict[str, Any]], tuple[str, ...]] | None = None
    reads_files: bool = True

    def available_splits(self, root: Path, options: dict[str, Any] | None = None) -> tuple[str, ...]:
        """The splits present for data under ``root`` read with the dataset ``options``."""
        return self.find_splits(root, dict(options or {})) if self.find_splits else self.splits

    def explicit_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` without those given their default (the builder's keyword default; ``inspect`` follows
        ``functools.partial`` and ``functools.wraps``): a default spelled out reads the same data as one left out."""
        params = inspect.signature(self.builder).parameters
        return {k: v for k, v in options.items() if k not in params or params[k].default != v}


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add (or replace) a dataset in the registry."""
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; unknown names fail with the close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = did_you_mean(name, _REGISTRY)
        raise ValueError(f"unknown --dataset {name!r}{hint} (`vprompt list datasets` shows them)") from None


def check_dataset(name: str, options: Mapping[str, Any] | None = None) -> DatasetSpec:
    """The spec of ``name`` once its ``options`` are known to be its own; an unknown name or option fails with
    what there is (before a run builds its model)."""
    spec = get_dataset_spec(name)
    unknown = sorted(set(options or {}) - set(spec.options))
    if unknown:
        known = ", ".join(sorted(spec.options)) or "none"
        message = f"dataset {name!r} has no option {unknown[0]!r} (--dataset-option; it takes: {known})"
        raise DatasetOptionError(message, unknown[0])
    return spec


def default_data_dir() -> Path:
    """``$VPROMPT_DATA`` or ``~/.cache/vprompt/data``."""
    return Path(os.environ.get("VPROMPT_DATA", Path.home() / ".cache" / "vprompt" / "data")).expanduser()


def data_root(root: str | Path | None) -> Path:
    """The data folder ``root`` (``~`` expanded), or :func:`default_data_dir` where none is given."""
    return Path(root).expanduser() if root is not None else default_data_dir()


def create_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    **options: Any,
) -> Dataset:
    """Build split ``split`` of dataset ``name``.

    Args:
        name: a registered name (:func:`list_datasets`).
        root: the data folder (default :func:`default_data_dir`).
        split: one of the spec's ``splits``.
        transform: decode-time transform for file datasets (ignored by in-memory ones).
        download: fetch missing files where the dataset has a public download.
        **options: dataset-specific options.
    """
    spec = check_dataset(name, options)
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r} (it has: {', '.join(spec.splits)})")
    root = data_root(root)
    ds = spec.builder(root=root, split=split, transform=transform, download=download, **options)
    if spec.classnames is not None and not getattr(ds, "classnames", None):
        ds.classnames = list(spec.classnames)
    return ds
