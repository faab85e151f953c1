"""RESISC45, DMLab and UCF101 (middle frames): torchvision does not have them. Two routes:

* **folder** (offline): ``DIR/<name>/`` in one of these layouts, the first one present giving every split (a
  split it lacks is missing, not taken from another layout):

  1. split files ``DIR/<name>/<split>.txt`` (``train.txt``, ``val.txt``, ``test.txt``), one image per line:
     ``<path relative to DIR/<name>> <label>``, the label an integer in the class order of the metadata
     (``vprompt/data/metadata/<name>.json``, also in docs/DATASETS.md);
  2. UCF101 only: CoOp's release, ``DIR/ucf101/UCF-101-midframes/<Class_Name>/<video>.jpg`` with
     ``DIR/ucf101/split_zhou_UCF101.json``;
  3. class folders ``DIR/<name>/<split>/<class>/<image>``, a class folder named like a class (case, spaces,
     ``_``, ``-`` and ``/`` ignored: ``baseball_diamond``, ``ApplyEyeMakeup``) or by its integer label.

* **hf**: the Hugging Face ``datasets`` library (``pip install 'vprompt[hf]'``), a hub id or a local folder of
  parquet files as the hub stores them (``data/train-*.parquet``), cached in ``DIR/huggingface``.

``source=auto`` (the default) takes the folder when ``DIR/<name>`` exists and no ``hf_id`` is given, and the hub
otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from PIL import Image
from torch.utils.data import Dataset

from .base import FileDataset, to_rgb
from .benchmark_base import check_listed, classnames, map_names
from .datasets import class_folders, holds_images, image_files
from .registry import DatasetNotFoundError, DatasetOptionError, MissingDependencyError, SplitNotFoundError

__all__ = ["HF_DEFAULTS", "HFImageDataset", "folder_splits", "hub_or_folder_dataset"]

_log = logging.getLogger(__name__)

#: Default hub ids. timm/resisc45: the 60/20/20 split of VTAB (18,900 / 6,300 / 6,300). clip-benchmark's
#: wds_vtab-dmlab: VTAB's DMLab (train and test; webdataset). UCF101 middle frames have no canonical hub copy.
HF_DEFAULTS: dict[str, str | None] = {
    "resisc45": "timm/resisc45",
    "dmlab": "clip-benchmark/wds_vtab-dmlab",
    "ucf101": None,
}
#: Splits of the default hub copies (the folder route finds its own).
HF_SPLITS = {"resisc45": ("train", "val", "test"), "dmlab": ("train", "test"), "ucf101": ("train", "val", "test")}
#: Hub split names tried for each of ours.
_HUB_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
#: CoOp's UCF101 release: (split file, image folder).
_COOP = {"ucf101": ("split_zhou_UCF101.json", "UCF-101-midframes")}
_SPLITS = ("train", "val", "test")

_FOLDER_HELP = (
    "DIR/{name}/<split>.txt with lines '<relative path> <label>', or DIR/{name}/<split>/<class>/<image>"
    "{coop}; see docs/DATASETS.md"
)


def _layout(name: str) -> str:
    coop = f", or CoOp's {_COOP[name][1]}/ + {_COOP[name][0]}" if name in _COOP else ""
    return _FOLDER_HELP.format(name=name, coop=coop)


def _from_folder(folder: Path, source: str, hf_id: str | None) -> bool:
    """Whether the folder route serves: asked for, or (``auto``) the folder exists and no hub copy is named."""
    return source == "folder" or (source == "auto" and hf_id is None and folder.is_dir())


def _folder_layout(name: str, folder: Path) -> str:
    """One layout for every split of ``folder``: ``txt`` when any ``<split>.txt`` is there, else ``coop`` (CoOp's
    split file), else ``dirs``. Mixing them would take a split from one and the rest from another: CoOp's val
    videos are official training videos, which a user's own train.txt also lists."""
    txt = any((folder / f"{s}.txt").is_file() for s in _SPLITS)
    coop = name in _COOP and (folder / _COOP[name][0]).is_file()
    if txt and coop:
        _warn_both_layouts(name, folder)
    return "txt" if txt else "coop" if coop else "dirs"


@functools.cache
def _warn_both_layouts(name: str, folder: Path) -> None:
    """Said once per folder, not once for each split read from it."""
    _log.warning("dataset %s: %s has <split>.txt files and %s; the .txt files give every split", name, folder,
                 _COOP[name][0])  # fmt: skip


def folder_splits(name: str, root: Path, source: str = "auto", hf_id: str | None = None) -> tuple[str, ...]:
    """The splits present for ``name`` under ``root``: the folder route's, the default hub copy's, or for another
    copy (``hf_id``) every split, the ones it lacks failing when asked for."""
    folder = Path(root) / name
    if not _from_folder(folder, source, hf_id):
        return HF_SPLITS[name] if hf_id is None else _SPLITS
    layout = _folder_layout(name, folder)
    if layout == "coop":
        return tuple(s for s in _SPLITS if _coop_entries(folder / _COOP[name][0], s))
    if layout == "txt":
        return tuple(s for s in _SPLITS if (folder / f"{s}.txt").exists())
    return tuple(s for s in _SPLITS if holds_images(folder / s))  # (an empty val/ is no split: held out of train)


def _coop_entries(path: Path, split: str) -> list[list[Any]]:
    """The ``split`` entries of CoOp's split file, each ``[image path, label, class name]``."""
    expected = '{"train": [[image path, label, class name], ...], "val": [...], "test": [...]}'
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # not UTF-8, not JSON
        raise ValueError(f"{path}: not a JSON file ({e}); CoOp's split file is {expected}") from None
    entries = data.get(split, []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str) for e in entries
    ):
        raise ValueError(f"{path}: {split!r} is not a list of CoOp's entries; CoOp's split file is {expected}")
    return entries


def _label_of_folder(name: str, folder: Path, names: Sequence[str]) -> int:
    if folder.name.isascii() and folder.name.isdigit() and int(folder.name) < len(names):  # (not "²", "①")
        return int(folder.name)
    where = f"the folder {folder} (named like a class, or by a label in 0..{len(names) - 1})"
    return map_names(name, [folder.name], names, where)[0]


def _txt_samples(split_txt: Path, folder: Path, num_classes: int) -> list[tuple[str, int]]:
    """The (path, label) lines of a ``<split>.txt`` file, paths relative to ``folder``."""
    try:
        lines = split_txt.read_text(encoding="utf-8-sig").splitlines()  # (Notepad's BOM)
    except UnicodeDecodeError as e:
        raise ValueError(f"{split_txt}: not UTF-8 text ({e}); save it as UTF-8") from None
    samples = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rel, _, label = line.rstrip().rpartition(" ")
        if not rel or not re.fullmatch(r"-?[0-9]+", label) or not 0 <= int(label) < num_classes:
            raise ValueError(f"{split_txt}:{n}: expected '<relative path> <label in 0..{num_classes - 1}>'")
        samples.append((str(folder / rel), int(label)))
    return samples


def _check_disjoint(split_txt: Path, paths: Sequence[str], folder: Path, num_classes: int) -> None:
    """Refuse a split file that lists an image twice, or one another split file of ``folder`` lists: validation or
    test would score training images."""
    files = {os.path.normpath(p) for p in paths}
    if len(files) != len(paths):
        raise ValueError(f"{split_txt} lists an image more than once; list each image once")
    for other in (folder / f"{s}.txt" for s in _SPLITS):
        if other != split_txt and other.is_file():
            shared = files & {os.path.normpath(p) for p, _ in _txt_samples(other, folder, num_classes)}
            if shared:
                raise ValueError(
                    f"{split_txt} and {other} share {len(shared)} images (e.g. {min(shared)}): a split's images are "
                    "no other split's, or validation and test score training images; list each image in one"
                )


def folder_dataset(name: str, folder: Path, split: str, transform: Callable[..., Any] | None) -> FileDataset:
    """The folder route (see the module doc)."""
    names = classnames(name)
    layout = _folder_layout(name, folder)
    split_txt = folder / f"{split}.txt"
    if layout == "txt" and split_txt.is_file():
        samples = _txt_samples(split_txt, folder, len(names))
        _check_disjoint(split_txt, [p for p, _ in samples], folder, len(names))
        check_listed(str(split_txt), [p for p, _ in samples], f"its paths are relative to {folder}")
        return FileDataset(samples, names, transform)
    if layout == "coop":
        split_json, images = _COOP[name]
        entries = _coop_entries(folder / split_json, split)
        if not entries:
            raise DatasetNotFoundError(f"dataset {name}: {folder / split_json} has no {split!r} split")
        # CoOp's entries are [image path, label, class name]; the label follows from the name.
        labels = map_names(name, [e[2] for e in entries], names)
        samples = [(str(folder / images / e[0]), y) for e, y in zip(entries, labels)]
        check_listed(str(folder / split_json), [p for p, _ in samples], f"its paths are relative to {folder / images}")
        return FileDataset(samples, names, transform)
    split_dir = folder / split
    if layout == "dirs" and split_dir.is_dir():
        samples = [(str(f), _label_of_folder(name, c, names)) for c in class_folders(split_dir) for f in image_files(c)]
        if samples:
            return FileDataset(samples, names, transform)
    raise DatasetNotFoundError(f"dataset {name}: no {split!r} split under {folder} (expected {_layout(name)})")


class HFImageDataset(Dataset):
    """A Hugging Face ``datasets.Dataset`` seen as ``(transform(PIL image), label)`` items with ``targets`` and
    ``classnames`` (the label column is read without decoding any image).

    Args:
        data: the split.
        image_key: the image column.
        targets: the labels, in the clean class order.
        classnames: the clean class names.
        transform: PIL image -> tensor.
    """

    def __init__(
        self,
        data: Any,
        image_key: str,
        targets: Sequence[int],
        classnames: Sequence[str],
        transform: Callable[..., Any] | None = None,
    ) -> None:
        self.data, self.image_key = data, image_key
        self.targets = [int(y) for y in targets]
        self.classnames = list(classnames)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.data[int(i)][self.image_key]
        if not isinstance(img, Image.Image):  # raw bytes (a webdataset column without an image feature)
            import io

            img = Image.open(io.BytesIO(img))
        img = to_rgb(img)
        return (self.transform(img) if self.transform else img), self.targets[i]


_IMAGE_KEYS = ("image", "img", "jpg", "jpeg", "png", "webp")
_LABEL_KEYS = ("label", "labels", "cls", "target")


def _columns(data: Any) -> tuple[str, str, Any]:
    """The image column, the label column and the label feature of a hub dataset."""
    import datasets

    feats = data.features
    image = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in _IMAGE_KEYS if k in feats), None)
    label = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((k for k in _LABEL_KEYS if k in feats), None)
    if image is None or label is None:
        raise ValueError(f"no image and label columns among {list(feats)}")
    return image, label, feats[label]


def _hub_labels(name: str, raw: Sequence[Any], feature: Any) -> list[int]:
    """Labels in our order: ClassLabel names are matched to ours by name, plain integers are taken as ours."""
    names = classnames(name)
    hub_names = getattr(feature, "names", None)
    if hub_names and not all(n.isdigit() for n in hub_names):
        to_ours = map_names(name, hub_names, names)
        return [to_ours[int(y)] for y in raw]
    labels = [int(y) for y in raw]
    if labels and not 0 <= min(labels) <= max(labels) < len(names):
        raise ValueError(f"dataset {name}: hub labels outside 0..{len(names) - 1}")
    return labels


def hub_dataset(
    name: str, hub_id: str, split: str, transform: Callable[..., Any] | None, download: bool, cache_dir: Path
) -> HFImageDataset:
    """The hf route: split ``split`` of hub dataset (or local parquet folder) ``hub_id``."""
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            f"dataset {name} from the Hugging Face hub needs the `datasets` package: pip install 'vprompt[hf]' "
            f"(or put the files in the offline layout: {_layout(name)})"
        ) from None
    config = datasets.DownloadConfig(local_files_only=not download, cache_dir=str(cache_dir / "downloads"))
    # Without --download nothing may touch the network: `datasets` then serves hub ids from its cache only.
    offline = contextlib.nullcontext() if download else mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True)
    data, last = None, None
    for hub_split in _HUB_SPLIT_NAMES[split]:
        try:
            with offline:
                data = datasets.load_dataset(hub_id, split=hub_split, cache_dir=str(cache_dir), download_config=config)
            break
        except ValueError as e:  # unknown split name: try the next spelling
            last = e
        except Exception as e:  # noqa: BLE001 (network, missing cache, unknown id: one clear error)
            hint = "" if download else "; --download fetches it"
            raise DatasetNotFoundError(
                f"dataset {name}: cannot load {hub_id!r} split {hub_split!r} from the Hugging Face hub into "
                f"{cache_dir} ({type(e).__name__}: {e}){hint}; offline: {_layout(name)}"
            ) from e
    if data is None:
        raise SplitNotFoundError(f"dataset {name}: {hub_id!r} has no {split!r} split ({last})")
    try:
        image_key, label_key, feature = _columns(data)
    except ValueError as e:
        raise ValueError(f"dataset {name}: {hub_id!r}: {e}") from None
    targets = _hub_labels(name, list(data[label_key]), feature)
    return HFImageDataset(data, image_key, targets, classnames(name), transform)


def hub_or_folder_dataset(
    name: str,
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    source: str = "auto",
    hf_id: str | None = None,
) -> Dataset:
    """Builder of RESISC45, DMLab and UCF101 (see the module doc).

    Args:
        source: ``auto`` (folder when ``root/<name>`` exists and no ``hf_id`` is given, else hub), ``folder`` or
            ``hf``.
        hf_id: hub id or local parquet folder (default :data:`HF_DEFAULTS`).
    """
    folder = Path(root) / name
    if source not in ("auto", "folder", "hf"):
        raise DatasetOptionError(f"dataset {name}: source must be auto, folder or hf, not {source!r}", "source")
    if _from_folder(folder, source, hf_id):
        if not folder.is_dir():
            raise DatasetNotFoundError(f"dataset {name}: no folder {folder} (expected {_layout(name)})")
        return folder_dataset(name, folder, split, transform)
    hub_id = hf_id or HF_DEFAULTS[name]
    if hub_id is None:
        raise DatasetNotFoundError(
            f"dataset {name}: no folder {folder} (expected {_layout(name)}) and no default hub copy "
            "(pass --dataset-option hf_id=<hub id or parquet folder>)"
        )
    return hub_dataset(name, str(hub_id), split, transform, download, Path(root) / "huggingface")
