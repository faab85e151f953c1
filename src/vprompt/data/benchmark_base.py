"""Shared pieces of the benchmark datasets: class names and templates (package data), name matching, the shipped
seeded splits, and the errors every builder raises.

Class names and prompt templates live in ``vprompt/data/metadata/<name>.json`` as ``{"classnames": [...],
"templates": [...], "source": "..."}`` and are read on first use. The ``classnames`` are in the label order the
loader produces; the loaders map the raw names of the files (folder names, annotation names) onto this list by
:func:`name_key`, so a wrong order fails loudly instead of silently mislabelling.

Datasets without an official split (EuroSAT, SUN397, Caltech101) use a seeded split shipped as
``vprompt/data/split_files/<name>.npz`` (arrays ``train``, ``val``, ``test`` of sorted indices into the loader's
deterministic file order, plus ``num_samples``, ``class_counts``, ``seed`` and ``fractions``). ``tools/
make_benchmark_splits.py`` re-creates them with :func:`make_seeded_split`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, overload

import numpy as np

from .registry import DatasetNotFoundError

__all__ = [
    "LazyList",
    "SeededSplit",
    "check_listed",
    "classnames",
    "load_metadata",
    "load_seeded_split",
    "make_seeded_split",
    "map_folders",
    "map_names",
    "missing",
    "name_key",
    "select_split",
    "split_path",
    "write_seeded_split",
]

#: Shares of each class (or of the whole set) that go to validation and test; training gets the rest.
#: 50 / 20 / 30 is CoOp's EuroSAT split (13,500 / 5,400 / 8,100), used here for all three datasets.
SPLIT_FRACTIONS = {"val": 0.2, "test": 0.3}
#: The seed of the shipped splits.
SPLIT_SEED = 0


def _data_dir() -> Any:
    return resources.files("vprompt.data")


@functools.cache
def load_metadata(name: str) -> dict[str, Any]:
    """The metadata of dataset ``name`` (``classnames``, ``templates``, ``source``, sometimes ``folders`` and
    ``class_counts``), read once from the package data."""
    path = _data_dir().joinpath("metadata", f"{name}.json")
    if not path.is_file():
        raise KeyError(f"no metadata for dataset {name!r} (vprompt/data/metadata/{name}.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def classnames(name: str) -> list[str]:
    """The clean class names of ``name``, in label order."""
    return list(load_metadata(name)["classnames"])


class LazyList(Sequence):
    """A read-only list that reads ``load_metadata(name)[key]`` on first access, so that registering the datasets
    (at import) reads no files."""

    def __init__(self, name: str, key: str) -> None:
        self.name, self.key = name, key

    def _items(self) -> list[str]:
        return load_metadata(self.name)[self.key]

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        return self._items()[i]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __repr__(self) -> str:
        return f"LazyList({self.name!r}, {self.key!r})"


def name_key(name: str) -> str:
    """A class name reduced to lower-case letters and digits: ``Apply_Eye_Makeup``, ``ApplyEyeMakeup`` and
    ``apply eye makeup`` all become ``applyeyemakeup``. Used to match raw names to the clean lists."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def map_names(
    dataset: str, raw: Sequence[str], names: Sequence[str] | None = None, where: str = "the files"
) -> list[int]:
    """The label (index into the clean list) of each raw class name, matched by :func:`name_key`; ``where`` says
    where the names come from, for the error.

    Raises:
        ValueError: a raw name matches no clean name (the metadata and the files disagree).
    """
    names = classnames(dataset) if names is None else names
    index = {name_key(n): i for i, n in enumerate(names)}
    out = []
    for r in raw:
        k = name_key(r)
        if k not in index:
            raise ValueError(
                f"dataset {dataset}: class {r!r} of {where} is not one of the {len(names)} known classes "
                f"(vprompt/data/metadata/{dataset}.json)"
            )
        out.append(index[k])
    return out


def map_folders(dataset: str, raw: Sequence[str]) -> list[int]:
    """Like :func:`map_names`, matching against the metadata's ``folders`` (the raw folder name of each class, for
    datasets whose clean names are not spellings of their folder names: EuroSAT, Caltech101)."""
    return map_names(dataset, raw, load_metadata(dataset)["folders"])


def missing(
    dataset: str,
    folder: Path,
    layout: str,
    hint: str | None = "--download fetches them",
    what: str = "files not found",
) -> DatasetNotFoundError:
    """The one-line error for files that are not there (``what``): the folder, the expected layout, how to get them."""
    how = f"; {hint}" if hint else ""
    return DatasetNotFoundError(f"dataset {dataset}: {what} under {folder} (expected {layout}{how})")


def check_listed(listing: str, paths: Sequence[str], fix: str) -> None:
    """The images a file list names must all be there (a download or extraction stopped part-way leaves some out):
    told as the data are built, naming the list, the first image missing and ``fix``, not mid-epoch."""
    gone = [p for p in paths if not os.path.isfile(p)]
    if gone:
        raise DatasetNotFoundError(
            f"{listing}: {len(gone)} of the {len(paths)} images it lists are not there (the first: {gone[0]}); {fix}"
        )


# ---------------------------------------------------------------------------------------------- seeded splits
@dataclass(frozen=True)
class SeededSplit:
    """A shipped split: sorted indices per split into the loader's file order of ``num_samples`` images.

    ``class_counts`` is non-empty for stratified splits: the images per class, the classes lying in contiguous
    blocks in label order (the loader's order)."""

    indices: dict[str, np.ndarray]
    num_samples: int
    class_counts: tuple[int, ...]
    seed: int
    fractions: tuple[float, float]

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.indices.items()}


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))  # half up, so 0.5 -> 1 on every platform and numpy version


def make_seeded_split(
    num_samples: int,
    seed: int = SPLIT_SEED,
    class_counts: Sequence[int] | None = None,
    val: float = SPLIT_FRACTIONS["val"],
    test: float = SPLIT_FRACTIONS["test"],
) -> SeededSplit:
    """Split ``range(num_samples)`` into train / val / test with a ``numpy.random.default_rng(seed)`` permutation.

    With ``class_counts`` the split is stratified: class ``c`` occupies the contiguous block of ``class_counts[c]``
    indices after the previous classes, and each class gives ``round(val * n)`` images to val and ``round(test *
    n)`` to test. Without, the same shares of the whole set are drawn (not stratified).
    """
    counts = list(class_counts) if class_counts else [num_samples]
    if sum(counts) != num_samples:
        raise ValueError(f"class counts sum to {sum(counts)}, not {num_samples}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    start = 0
    for n in counts:
        perm = start + rng.permutation(n)
        n_val, n_test = _round(val * n), _round(test * n)
        parts["val"].append(perm[:n_val])
        parts["test"].append(perm[n_val : n_val + n_test])
        parts["train"].append(perm[n_val + n_test :])
        start += n
    indices = {k: np.sort(np.concatenate(v)).astype(np.uint32) for k, v in parts.items()}
    return SeededSplit(indices, num_samples, tuple(class_counts or ()), seed, (val, test))


def write_seeded_split(path: str | Path, split: SeededSplit) -> None:
    """Save ``split`` as a compressed ``.npz``."""
    np.savez_compressed(
        path,
        **split.indices,
        num_samples=np.int64(split.num_samples),
        class_counts=np.asarray(split.class_counts, dtype=np.int64),
        seed=np.int64(split.seed),
        fractions=np.asarray(split.fractions, dtype=np.float64),
    )


def split_path(dataset: str) -> Any:
    """The shipped split file of ``dataset`` (a ``importlib.resources`` path)."""
    return _data_dir().joinpath("split_files", f"{dataset}.npz")


_SPLIT_ARRAYS = ("train", "val", "test", "num_samples", "class_counts", "seed", "fractions")


def load_seeded_split(dataset: str, path: str | Path | None = None) -> SeededSplit:
    """Read a split file: ``path`` if given, else the one shipped for ``dataset``.

    Raises:
        DatasetNotFoundError: the file is not a split file, or its splits overlap or index past its images.
    """
    src = Path(str(path)).expanduser() if path is not None else split_path(dataset)
    try:
        with resources.as_file(src) as p, np.load(p, allow_pickle=False) as z:
            missing = [k for k in _SPLIT_ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"it has no {', '.join(missing)} (a split file holds {', '.join(_SPLIT_ARRAYS)})")
            split = SeededSplit(
                {k: z[k].astype(np.int64) for k in ("train", "val", "test")},
                int(z["num_samples"]),
                tuple(int(c) for c in z["class_counts"]),
                int(z["seed"]),
                (float(z["fractions"][0]), float(z["fractions"][1])),
            )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # absent, not .npz, damaged, pickled
        raise DatasetNotFoundError(f"split file {src}: {e}") from e
    seen = np.concatenate(list(split.indices.values()))
    if len(seen) and (seen.min() < 0 or seen.max() >= split.num_samples):
        raise DatasetNotFoundError(f"split file {src}: an index lies outside 0..{split.num_samples - 1}")
    if len(np.unique(seen)) != len(seen):
        raise DatasetNotFoundError(f"split file {src}: train, val and test share images (or repeat one)")
    return split


def select_split(
    dataset: str, folder: Path, labels: Sequence[int], split: str, split_file: str | Path | None = None
) -> list[int]:
    """The indices of ``split`` among the loader's ``len(labels)`` images, after checking that the images are the
    ones the split was made for (same count; for stratified splits, the same per-class counts in label order).
    ``folder`` holds the images (for datasets with ``folders`` in their metadata, the class folders).

    Raises:
        DatasetNotFoundError: the images under ``folder`` are not the ones the split file indexes.
    """
    s = load_seeded_split(dataset, split_file)
    shipped = f"the shipped split (vprompt/data/split_files/{dataset}.npz)"
    which = f"the split file {split_file}" if split_file else shipped
    if len(labels) != s.num_samples:
        raise DatasetNotFoundError(
            f"dataset {dataset}: found {len(labels):,} images under {folder} but {which} indexes {s.num_samples:,}; "
            "the copy is incomplete or a different release (pass --dataset-option split_file=PATH for your own split)"
        )
    if s.class_counts:
        y = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(y, minlength=len(s.class_counts)).tolist()
        if counts != list(s.class_counts) or np.any(np.diff(y) < 0):
            bad = next((c for c, (a, b) in enumerate(zip(counts, s.class_counts)) if a != b), None)
            detail = "the labels are not in contiguous class blocks"
            if bad is not None:
                meta = load_metadata(dataset)
                where = f", {folder / meta['folders'][bad]}" if "folders" in meta else ""
                detail = (
                    f"class {bad} ({meta['classnames'][bad]!r}{where}) has {counts[bad]} images, "
                    f"expected {s.class_counts[bad]}"
                )
            raise DatasetNotFoundError(f"dataset {dataset}: the images under {folder} do not match {which} ({detail})")
    return s.indices[split].tolist()
