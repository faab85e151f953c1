"""Distribution shift: CIFAR-10-C / CIFAR-100-C, and the WILDS datasets Camelyon17, iWildCam and FMoW.

A prompt trained on a dataset is evaluated on shifted versions of its test data (``vprompt eval --shift``). The
*shift sets* of a dataset are registered by dataset name (:func:`register_shift`):

* ``cifar10`` / ``cifar100``: every (corruption, severity) of CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich,
  ICLR 2019), named ``cifar10c/<corruption>/<severity>``. The public release is a folder ``CIFAR-10-C/`` (or
  ``CIFAR-100-C/``) under the data folder holding ``labels.npy`` and one ``<corruption>.npy`` per corruption:
  50,000 x 32 x 32 x 3 uint8, the 10,000 test images at severity 1, then at severity 2, ... 5. The standard
  summary is the mean over the 15 corruptions of :data:`CORRUPTIONS` (per severity and overall); the 4 extra
  corruptions of the release (:data:`EXTRA_CORRUPTIONS`) are reported when asked for, outside the mean.
* ``camelyon17``, ``iwildcam``, ``fmow``: their WILDS evaluation splits, ``<name>/id_test`` (where WILDS has one),
  ``<name>/ood_val`` and ``<name>/ood_test``.

The WILDS datasets are also in the dataset registry, read through the ``wilds`` package (an optional extra:
``pip install 'vprompt[wilds]'``) from ``--data-dir`` (WILDS' own layout, e.g. ``camelyon17_v1.0/``):

==============  =====================  ==============================  =====================================
name            train                  val (selects the epoch)          test
==============  =====================  ==============================  =====================================
camelyon17      WILDS train            WILDS ``id_val``                 WILDS ``test`` (OOD, hospital 2)
iwildcam        WILDS train            WILDS ``id_val``                 WILDS ``test`` (OOD, unseen cameras)
fmow            WILDS train            WILDS ``id_val``                 WILDS ``test`` (OOD, 2016 and later)
==============  =====================  ==============================  =====================================

Selecting on the in-distribution validation split keeps the shifted data out of every decision; WILDS' own
protocol selects on its OOD validation split instead: ``--dataset-option val_split=ood_val``. The extra splits
``id_val``, ``id_test``, ``ood_val`` and ``ood_test`` can be named directly (``create_dataset(..., split=...)``).
Class names: Camelyon17 uses CLIP's PatchCamelyon names ("lymph node", "lymph node containing metastatic tumor
tissue"); FMoW its 62 WILDS categories (package data ``metadata/shift_fmow.json``); iWildCam the species names of
the release's ``categories.csv`` (class indices when that file is absent, with a warning).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..checkpoint import current_umask
from ..download import DigestMismatch, clear_stale, download_verified, file_digest
from ..errors import DataFileError
from .base import ArrayDataset, build_transform, to_rgb
from .registry import (
    DatasetNotFoundError,
    DatasetOptionError,
    DatasetSpec,
    MissingDependencyError,
    data_root,
    register_dataset,
)

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "CIFAR_C",
    "ShiftSet",
    "MissingDependencyError",
    "cifar_c_dataset",
    "cifar_c_folder",
    "download_cifar_c",
    "safe_extract",
    "register_shift",
    "list_shift_datasets",
    "find_shift_sets",
    "summarize_shift",
    "format_shift_report",
    "split_kind",
    "wilds_dataset",
    "WILDS_DATASETS",
]

_log = logging.getLogger(__name__)

#: The 15 corruptions of the CIFAR-C benchmark, in the order of the paper (noise, blur, weather, digital).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
#: The 4 further corruptions of the public release (held-out corruptions in the paper; not in the mean).
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)

#: classes -> (folder name, public download, its MD5 as published with the Zenodo record).
CIFAR_C = {
    10: ("CIFAR-10-C", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar", "56bf5dcef84df0e2308c6dcbcbbd8499"),
    100: (
        "CIFAR-100-C",
        "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
        "11f0ed0f1191edbf9fa23466ae6021d3",
    ),
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-100-C


def cifar_c_folder(root: str | Path | None, classes: int = 10) -> Path:
    """Where the CIFAR-``classes``-C release lives under the data folder ``root``."""
    if classes not in CIFAR_C:
        raise ValueError(f"CIFAR-C exists for 10 and 100 classes, not {classes}")
    return data_root(root) / CIFAR_C[classes][0]


def _missing_cifar_c(folder: Path, classes: int, what: str, downloading: bool = False) -> DatasetNotFoundError:
    url = CIFAR_C[classes][1]
    if folder.is_dir():  # --download fetches only into a folder that is not there
        how = f"complete it from {url}, or delete it and pass --download"
    else:  # (after --download itself failed, passing it again is no advice)
        how = f"download {url} and extract it into {folder.parent}" + ("" if downloading else ", or pass --download")
    return DatasetNotFoundError(f"CIFAR-{classes}-C: {what} in {folder} ({how})")


def _available_corruptions(folder: Path) -> list[str]:
    return [c for c in (*CORRUPTIONS, *EXTRA_CORRUPTIONS) if (folder / f"{c}.npy").is_file()]


def cifar_c_dataset(
    root: str | Path | None,
    corruption: str,
    severity: int,
    classes: int = 10,
    download: bool = False,
    classnames: Sequence[str] | None = None,
) -> ArrayDataset:
    """One (corruption, severity) of CIFAR-10-C / CIFAR-100-C, in memory.

    Args:
        root: the data folder holding ``CIFAR-10-C/`` (or ``CIFAR-100-C/``).
        corruption: one of :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
        severity: 1 (mildest) to 5.
        classes: 10 or 100.
        download: fetch and extract the release when the folder is missing.
        classnames: the class names to carry (default: CIFAR-10's, or ``class <i>`` for CIFAR-100).

    Raises:
        DatasetNotFoundError: the files are missing (the message names the folder and the download URL).
        ValueError: an unknown corruption, a severity outside 1..5, or files of an unexpected shape.
    """
    if corruption not in CORRUPTIONS + EXTRA_CORRUPTIONS:
        raise ValueError(
            f"unknown corruption {corruption!r} (choose from {', '.join(CORRUPTIONS + EXTRA_CORRUPTIONS)})"
        )
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity} must be one of 1..5")
    folder = cifar_c_folder(root, classes)
    if not folder.is_dir() and download:
        download_cifar_c(folder.parent, classes)
    images_file, labels_file = folder / f"{corruption}.npy", folder / "labels.npy"
    for f in (labels_file, images_file):
        if not f.is_file():
            raise _missing_cifar_c(folder, classes, f"no {f.name}")
    images, labels = _load_npy(images_file), _load_npy(labels_file)
    names = list(classnames) if classnames is not None else _default_cifar_names(classes)
    again = "download and extract the archive again"
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) % len(SEVERITIES):
        raise ValueError(
            f"{labels_file}: expected 1-D integer labels in 0..{len(names) - 1}, one per image of the 5 severities "
            f"(a multiple of 5), got {labels.dtype} {labels.shape}; {again}"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) != len(labels):
        raise ValueError(
            f"{images_file}: expected uint8 images ({len(labels)}, H, W, 3), one per label of {labels_file.name} "
            f"(all of severity 1, then 2, ... 5), got {images.dtype} {images.shape}; {again}"
        )
    n = len(labels) // len(SEVERITIES)
    part = slice((severity - 1) * n, severity * n)
    ys = np.asarray(labels[part]).astype(np.int64)
    if len(ys) and (ys.min() < 0 or ys.max() >= len(names)):
        raise ValueError(f"{labels_file}: labels outside 0..{len(names) - 1}; {again}")
    return ArrayDataset(np.array(images[part]), ys, names)  # a copy: the memory map is read-only


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped array file; one that is cut short or not a plain array (pickled objects are never read)
    is a :class:`DataFileError` naming it."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # (EOFError: an empty file, or one cut short in its header)
        pickled = "allow_pickle" in str(e) or "Python objects" in str(e)
        reason = "holds pickled objects, not an array" if pickled else f"cut short or corrupt ({e})"
        raise DataFileError(f"{path}: {reason}; download and extract the archive again") from e


def _default_cifar_names(classes: int) -> list[str]:
    return list(CIFAR10_CLASSES) if classes == 10 else [f"class {i}" for i in range(classes)]


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar archive into ``dest``, refusing members that would land outside it (absolute paths, ``..``)
    and anything but regular files and folders (links, devices)."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"{archive}: refusing to extract {m.name!r} (not a regular file or folder)")
            if os.path.isabs(m.name) or (target != dest and dest not in target.parents):
                raise ValueError(f"{archive}: refusing to extract {m.name!r} (outside {dest})")
        if hasattr(tarfile, "data_filter"):  # Python 3.12+, and security releases of 3.10/3.11
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - the members are checked above
            tar.extractall(dest, members=members)


def download_cifar_c(root: str | Path, classes: int = 10, url: str | None = None, md5: str | None = None) -> Path:
    """Download and extract CIFAR-``classes``-C into ``root`` (about 3 GB each); returns the folder.

    The archive (from ``url``, default the public release) is kept only if its MD5 is ``md5`` (default the
    release's), and so is one already in ``root`` from an earlier try; it is extracted into a staging folder that is
    renamed into place at the end, so an interruption leaves no half-written dataset behind.
    """
    name, default_url, default_md5 = CIFAR_C[classes]
    root = Path(root).expanduser()
    folder, archive, expected = root / name, root / f"{name}.tar", md5 or default_md5
    if folder.is_dir():
        archive.unlink(missing_ok=True)  # (kept by a process killed after it put the folder in place)
        return folder
    root.mkdir(parents=True, exist_ok=True)
    clear_stale(root, f".{name}.*.extracting")  # a copy a killed process was extracting
    if archive.is_file() and file_digest(archive, "md5") != expected:
        _log.warning("%s is not the published archive (MD5 mismatch); downloading it again", archive)
        archive.unlink()
    try:
        if not archive.is_file():
            _log.info("downloading %s to %s", url or default_url, archive)
            download_verified(url or default_url, archive, expected, "md5")
    except DigestMismatch as e:
        what = f"the download is not the published archive ({e}); no files"
        raise _missing_cifar_c(folder, classes, what, downloading=True) from e
    except OSError as e:
        raise _missing_cifar_c(folder, classes, f"the download failed ({e}); no files", downloading=True) from e
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".extracting", dir=root))  # its own per process
    os.chmod(staging, 0o777 & ~current_umask())  # (mkdtemp: private) it is the release folder of an archive without one
    try:
        safe_extract(archive, staging)
        found = staging / name if (staging / name).is_dir() else staging
        if not (found / "labels.npy").is_file():
            raise _missing_cifar_c(folder, classes, f"{archive} holds no {name}/labels.npy; no files", downloading=True)
        try:
            os.replace(found, folder)
        except OSError:
            if not folder.is_dir():
                raise  # else another process put the same release in place first: this copy is not needed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return folder


def _cifar_c_sets(
    root: Path,
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    classnames: Sequence[str] | None = None,
    classes: int = 10,
    **options: Any,
) -> list[ShiftSet]:
    folder = cifar_c_folder(root, classes)
    if not folder.is_dir():
        if not download:
            raise _missing_cifar_c(folder, classes, "no files")
        download_cifar_c(root, classes)
    present = _available_corruptions(folder)
    labels = (folder / "labels.npy").is_file()
    if not present or not labels:
        lacks = " and no ".join(
            name for name, there in (("labels.npy", labels), ("<corruption>.npy", present)) if not there
        )
        raise _missing_cifar_c(folder, classes, f"no {lacks}")
    absent = [c for c in CORRUPTIONS if c not in present]
    if absent:
        _log.warning("CIFAR-%d-C: %d of the 15 corruptions missing in %s: %s", classes, len(absent), folder, absent)
    group = f"cifar{classes}c"
    holds = (
        f"it holds only {', '.join(f'{c}.npy' for c in present)} (ask for one by name: --shift {group}/{present[0]})"
    )
    missing = {
        c: f"{_missing_cifar_c(folder, classes, f'no {c}.npy')}; {holds}"
        for c in (*CORRUPTIONS, *EXTRA_CORRUPTIONS)
        if c not in present
    }  # (once per corruption, not per severity)
    return [
        ShiftSet(
            f"{group}/{c}/{s}",
            partial(cifar_c_dataset, root, c, s, classes, False, classnames),
            group,
            c,
            s,
            default=c in CORRUPTIONS,
            missing=missing.get(c),
        )
        for c in (*CORRUPTIONS, *EXTRA_CORRUPTIONS)
        for s in SEVERITIES
    ]


# --------------------------------------------------------------------------------------------------------------
# Shift sets of a dataset


@dataclass(frozen=True)
class ShiftSet:
    """A shifted evaluation set of a dataset, built on demand.

    Attributes:
        name: ``<group>/<corruption>/<severity>`` or ``<group>/<split>``.
        build: returns the dataset (labels in the in-distribution dataset's class order).
        group: the family, for the summary (``cifar10c``, ``camelyon17``).
        corruption: the corruption (CIFAR-C), else None.
        severity: 1..5 (CIFAR-C), else None.
        default: part of the default selection (``--shift`` without names) and of the summary means.
        split: the dataset's own split this set is, if it is one (WILDS ``ood_test`` is the ``test`` split): an
            evaluation of that split is reused for it, not run again.
        in_distribution: an unshifted set evaluated beside the shifted ones (WILDS ``id_test``, ``id_val``): kept
            out of the group's mean, and reported as its ``id_mean`` and the ``gap`` (``id_mean`` minus ``mean``).
        missing: a set of the dataset whose files this data folder lacks: the one-line error (naming them and where
            to get them) for asking only for such sets; :func:`find_shift_sets` never returns one.
    """

    name: str
    build: Callable[[], Dataset]
    group: str
    corruption: str | None = None
    severity: int | None = None
    default: bool = True
    split: str | None = None
    in_distribution: bool = False
    missing: str | None = None


#: ``builder(root, transform=, download=, classnames=, **dataset_options) -> list[ShiftSet]``
ShiftBuilder = Callable[..., list[ShiftSet]]
_SHIFTS: dict[str, ShiftBuilder] = {}


def register_shift(dataset: str, builder: ShiftBuilder) -> None:
    """Declare the shift sets of ``dataset`` (a registry name)."""
    _SHIFTS[dataset] = builder


def list_shift_datasets() -> list[str]:
    """Datasets with registered shift sets."""
    return sorted(_SHIFTS)


register_shift("cifar10", partial(_cifar_c_sets, classes=10))
register_shift("cifar100", partial(_cifar_c_sets, classes=100))


def check_has_shifts(dataset: str) -> None:
    """Raise ValueError unless ``dataset`` has distribution-shift sets (before any data is read for them)."""
    if dataset not in _SHIFTS:
        have = ", ".join(list_shift_datasets())
        raise ValueError(f"--shift: no distribution-shift sets for dataset {dataset!r} (there are for: {have})")


def find_shift_sets(
    dataset: str,
    root: str | Path | None = None,
    patterns: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    image_size: int = 224,
    classnames: Sequence[str] | None = None,
    download: bool = False,
    options: dict[str, Any] | None = None,
) -> list[ShiftSet]:
    """The shift sets of ``dataset`` selected by ``patterns`` and ``severities``.

    Args:
        dataset: the in-distribution dataset's registry name.
        root: the data folder.
        patterns: names or shell-style globs (``cifar10c/*/5``, ``cifar10c/fog``: a name also selects what lies
            under it). None or empty: the default sets (CIFAR-C: the 15 standard corruptions, all severities).
        severities: keep only these severities (sets without one are kept).
        image_size: the prompter's image size (file datasets are decoded to it, as in evaluation).
        classnames: the in-distribution class names, carried by the shifted sets.
        download: fetch missing files where there is a public download.
        options: the run's dataset options (WILDS: ``val_split``).

    Raises:
        ValueError: no shift sets for ``dataset``, or a pattern that matches none.
        DatasetNotFoundError: the files are missing, or those of every set a pattern (or the default selection)
            names (naming the folder and where to get them).
    """
    check_has_shifts(dataset)
    root = data_root(root)
    transform = build_transform(image_size, random_crop=False)
    sets = _SHIFTS[dataset](root, transform=transform, download=download, classnames=classnames, **(options or {}))
    if patterns:
        asked = {
            p: [s for s in sets if fnmatch.fnmatchcase(s.name, p) or fnmatch.fnmatchcase(s.name, f"{p}/*")]
            for p in patterns
        }
    else:
        asked = {"(the default sets)": [s for s in sets if s.default]}
    chosen: list[ShiftSet] = []
    for pat, hits in asked.items():
        if not hits:
            names = [s.name for s in sets if s.missing is None]
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ValueError(f"--shift {pat!r} matches no shift set of {dataset} (they are: {shown})")
        there = [s for s in hits if s.missing is None]
        if not there:  # only sets whose files are not there: say which, and where to get them
            raise DatasetNotFoundError(f"--shift {pat}: {hits[0].missing}")
        chosen += [s for s in there if s not in chosen]
    sets = chosen
    if severities:
        bad = sorted(set(severities) - set(SEVERITIES))
        if bad:
            raise ValueError(f"--shift-severity {bad[0]} must be one of 1..5")
        sets = [s for s in sets if s.severity is None or s.severity in severities]
        if not sets:
            asked = " ".join(patterns) if patterns else "(the default sets)"
            raise ValueError(
                f"--shift {asked} with --shift-severity {' '.join(map(str, severities))} selects no shift set of "
                f"{dataset}: name sets of those severities, or drop --shift-severity"
            )
    return sets


def summarize_shift(sets: Iterable[ShiftSet], results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The standard summary of corruption benchmarks: per group, the mean top-1 accuracy over the standard
    corruptions at each severity and over all of them (mean corruption accuracy); groups without severities get
    the mean over their shifted sets, and where in-distribution sets were evaluated beside them, their mean
    (``id_mean``) and the ``gap``. Extra corruptions are not averaged in."""
    summary: dict[str, dict[str, Any]] = {}
    by_group: dict[str, list[ShiftSet]] = {}
    for s in sets:
        if s.name in results and s.default:
            by_group.setdefault(s.group, []).append(s)
    for group, evaluated in by_group.items():
        members = [s for s in evaluated if not s.in_distribution]
        entry: dict[str, Any] = {}
        if members:
            entry = {"mean": float(np.mean([results[s.name]["acc1"] for s in members])), "sets": len(members)}
        unshifted = [results[s.name]["acc1"] for s in evaluated if s.in_distribution]
        if unshifted:
            entry["id_mean"] = float(np.mean(unshifted))
            if members:
                entry["gap"] = entry["id_mean"] - entry["mean"]
        if any(s.severity is not None for s in members):
            per_sev = {}
            for sev in SEVERITIES:
                vals = [results[s.name]["acc1"] for s in members if s.severity == sev]
                if vals:
                    per_sev[str(sev)] = float(np.mean(vals))
            entry["severity"] = per_sev
            entry["corruptions"] = len({s.corruption for s in members})
        summary[group] = entry
    return summary


def _mean_label(summary: dict[str, Any]) -> str:
    """The mean row's label: its corruptions, and its sets where some corruption was evaluated at fewer severities
    than others (the mean is over the sets: a corruption evaluated at more severities weighs more)."""
    count = summary["corruptions"]
    label = f"mean ({count} corruption{'' if count == 1 else 's'}"
    full = summary["sets"] == count * len(summary["severity"])
    return f"{label})" if full else f"{label}, {summary['sets']} sets)"


def split_kind(dataset: str, split: str, options: dict[str, Any] | None = None) -> str:
    """What the evaluated split of ``dataset`` is, for the report: WILDS' ``test`` is its OOD test, and its ``val``
    the OOD validation split where the run's ``val_split`` (in ``options``) is ``ood_val``."""
    if dataset in WILDS_DATASETS:
        wilds = {"test": "ood_test", "val": str((options or {}).get("val_split", "id_val"))}.get(split, split)
        if wilds.startswith("ood_"):
            return f"WILDS OOD {wilds[4:]}"
    return "in distribution"


def format_shift_report(result: dict[str, Any]) -> str:
    """The text ``vprompt eval --shift`` prints: the in-distribution accuracy, then a corruption x severity table
    per corruption benchmark (with the mean row and column) and a line per other shifted set."""
    kind = result.get("split_kind") or split_kind(result["dataset"], result["split"])
    lines = [f"{result['dataset']} {result['split']} ({kind}): acc {result['acc1']:.2f} ({result['n']} images)"]
    shift: dict[str, dict[str, Any]] = result.get("shift", {})
    summary: dict[str, dict[str, Any]] = result.get("shift_summary", {})
    grid: dict[str, dict[str, dict[int, float]]] = {}
    flat: list[str] = []
    for name, r in shift.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[2].isdigit():
            grid.setdefault(parts[0], {}).setdefault(parts[1], {})[int(parts[2])] = r["acc1"]
        else:
            flat.append(name)
    for group, rows in grid.items():
        sevs = sorted({s for row in rows.values() for s in row})
        label = _mean_label(summary[group]) if "severity" in summary.get(group, {}) else ""
        width = max(len(c) for c in [*rows, label]) + 2
        lines.append("")
        lines.append(f"{group:{width}s}" + "".join(f"{f'sev {s}':>8s}" for s in sevs) + f"{'mean':>8s}")
        for corruption, row in rows.items():
            cells = "".join(f"{row[s]:8.2f}" if s in row else f"{'-':>8s}" for s in sevs)
            extra = "" if corruption in CORRUPTIONS else "  (extra; not in the mean)"
            lines.append(f"{corruption:{width}s}{cells}{np.mean(list(row.values())):8.2f}{extra}")
        if group in summary and "severity" in summary[group]:
            s = summary[group]
            cells = "".join(f"{s['severity'][str(v)]:8.2f}" if str(v) in s["severity"] else f"{'-':>8s}" for v in sevs)
            lines.append(f"{label:{width}s}{cells}{s['mean']:8.2f}")
    if flat:
        width = max(len(n) for n in flat) + 2
        lines.append("")
        for name in flat:
            r = shift[name]
            lines.append(f"{name:{width}s}acc {r['acc1']:6.2f} ({r['n']} images)")
    for group, s in summary.items():
        if "gap" in s:
            lines.append(
                f"{group}: shifted mean {s['mean']:.2f} ({s['sets']} sets), in distribution {s['id_mean']:.2f}, "
                f"gap {s['gap']:.2f}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# WILDS: Camelyon17, iWildCam, FMoW

#: name -> (our split -> WILDS split, description). ``val`` is chosen by the ``val_split`` option.
WILDS_DATASETS: dict[str, tuple[dict[str, str], str]] = {
    "camelyon17": (
        {"train": "train", "id_val": "id_val", "ood_val": "val", "ood_test": "test"},
        "WILDS Camelyon17: tumor vs normal tissue patches, 96x96; test = hospital 2 (OOD) (pip install vprompt[wilds])",
    ),
    "iwildcam": (
        {"train": "train", "id_val": "id_val", "id_test": "id_test", "ood_val": "val", "ood_test": "test"},
        "WILDS iWildCam: camera-trap species, 182 classes; test = unseen cameras (OOD) (pip install vprompt[wilds])",
    ),
    "fmow": (
        {"train": "train", "id_val": "id_val", "id_test": "id_test", "ood_val": "val", "ood_test": "test"},
        "WILDS FMoW: satellite land use, 62 classes; test = 2016 and later (OOD) (pip install vprompt[wilds])",
    ),
}
#: CLIP's class names for PatchCamelyon (the same tissue patches as Camelyon17).
CAMELYON17_CLASSES = ("lymph node", "lymph node containing metastatic tumor tissue")
_EVAL_SPLITS = ("id_val", "id_test", "ood_val", "ood_test")


def _import_wilds() -> Any:
    try:
        import wilds
    except ImportError as e:
        raise MissingDependencyError(
            "the WILDS datasets (camelyon17, iwildcam, fmow) need the `wilds` package: pip install 'vprompt[wilds]'"
        ) from e
    return wilds


_WILDS_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}


def _load_wilds(name: str, root: Path, download: bool) -> Any:
    """The WILDS dataset object (parsing its metadata takes seconds, so it is kept for the other splits)."""
    wilds = _import_wilds()
    key = (name, str(Path(root).resolve()))
    cached = _WILDS_CACHE.get(key)
    if cached is not None and cached[0] is wilds:
        return cached[1]
    Path(root).mkdir(parents=True, exist_ok=True)
    ds = wilds.get_dataset(dataset=name, root_dir=str(root), download=download)
    _WILDS_CACHE[key] = (wilds, ds)
    return ds


class WildsSplit(Dataset):
    """One split of a WILDS dataset as a vprompt dataset: ``(image, label)`` items, ``targets``, ``classnames``.

    Args:
        subset: ``WILDSDataset.get_subset(split)``, whose items are ``(PIL image, label, metadata)``.
        classnames: one name per class.
        transform: PIL image -> uint8 tensor.
    """

    def __init__(self, subset: Any, classnames: Sequence[str], transform: Callable[..., Any] | None = None) -> None:
        self.subset = subset
        self.targets = [int(y) for y in subset.y_array.tolist()]
        self.classnames = list(classnames)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y, _ = self.subset[i]
        img = to_rgb(x) if isinstance(x, Image.Image) else x
        return (self.transform(img) if self.transform else img), int(y)


def _package_json(name: str) -> Any:
    return json.loads((Path(__file__).parent / "metadata" / name).read_text())


def _iwildcam_classnames(data_dir: Path, n_classes: int) -> list[str]:
    """Species names in WILDS' label order (``y`` of the release's ``metadata.csv``)."""
    path = data_dir / "categories.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "y" in rows[0]:
            names = {int(r["y"]): r["name"] for r in rows}
        else:  # map through the release's metadata.csv, which has both the label y and the category id
            by_id = {int(r["category_id"]): r["name"] for r in rows}
            with open(data_dir / "metadata.csv", newline="") as f:
                names = {int(r["y"]): by_id[int(r["category_id"])] for r in csv.DictReader(f)}
        return [names[y] for y in range(n_classes)]
    except (OSError, KeyError, ValueError) as e:
        _log.warning("iwildcam: no class names (%s: %s); using class indices", path, e)
        return [f"class {y}" for y in range(n_classes)]


def _wilds_classnames(name: str, ds: Any) -> list[str]:
    n = int(ds.n_classes)
    if name == "camelyon17":
        names = list(CAMELYON17_CLASSES)
    elif name == "fmow":
        names = list(_package_json("shift_fmow.json"))
    else:
        names = _iwildcam_classnames(Path(ds.data_dir), n)
    if len(names) != n:
        raise ValueError(f"{name}: {len(names)} class names for {n} classes")
    return names


def wilds_dataset(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    name: str = "camelyon17",
    val_split: str = "id_val",
) -> WildsSplit:
    """A split of a WILDS dataset (see the module doc for the mapping of ``train``/``val``/``test``).

    Args:
        root: the data folder (WILDS' ``root_dir``).
        split: ``train``, ``val``, ``test`` or one of WILDS' evaluation splits ``id_val``, ``id_test``,
            ``ood_val``, ``ood_test``.
        transform: PIL image -> uint8 tensor.
        download: let WILDS download the dataset (iWildCam about 11 GB, FMoW about 50 GB).
        name: ``camelyon17``, ``iwildcam`` or ``fmow``.
        val_split: what ``val`` is: ``id_val`` (default) or ``ood_val`` (WILDS' official selection).
    """
    splits, _ = WILDS_DATASETS[name]
    if val_split not in ("id_val", "ood_val"):
        raise DatasetOptionError(
            f"dataset {name}: --dataset-option val_split={val_split} must be id_val or ood_val", "val_split"
        )
    ours = {"val": val_split, "test": "ood_test"}.get(split, split)
    if ours not in splits:
        more = ", ".join(s for s in splits if s not in ("train", "val", "test"))
        raise ValueError(f"dataset {name} has no split {split!r} (it has: train, val, test, {more})")
    ds = _load_wilds(name, root, download)
    return WildsSplit(ds.get_subset(splits[ours]), _wilds_classnames(name, ds), transform)


def _wilds_sets(
    root: Path,
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    classnames: Sequence[str] | None = None,
    name: str = "camelyon17",
    val_split: str = "id_val",
    **options: Any,
) -> list[ShiftSet]:
    splits, _ = WILDS_DATASETS[name]
    wanted = [s for s in _EVAL_SPLITS if s in splits and s != val_split]
    build = partial(wilds_dataset, root, transform=transform, download=download, name=name, val_split=val_split)
    return [
        ShiftSet(
            f"{name}/{s}",
            partial(build, s),
            name,
            split="test" if s == "ood_test" else None,
            in_distribution=s.startswith("id_"),
        )
        for s in wanted
    ]


for _name, (_splits, _doc) in WILDS_DATASETS.items():
    register_dataset(
        DatasetSpec(
            name=_name,
            builder=partial(wilds_dataset, name=_name),
            splits=("train", "val", "test", *(k for k in _splits if k != "train")),
            num_classes={"camelyon17": 2, "iwildcam": 182, "fmow": 62}[_name],
            description=_doc,
            options={"val_split": "id_val"},
        )
    )
    register_shift(_name, partial(_wilds_sets, name=_name))
