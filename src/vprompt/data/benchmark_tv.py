"""Builders of the benchmark datasets that torchvision.datasets reads.

Each builder opens the torchvision dataset (which checks the files, and downloads them with ``download=True``
where a download works), then returns a :class:`~vprompt.data.base.FileDataset` of ``(path, label)`` with the clean
class names, so that ``targets`` are known without decoding an image (SVHN, held in one ``.mat`` file, becomes an
in-memory :class:`~vprompt.data.base.ArrayDataset`). Labels are always re-derived from the raw class names or ids
and mapped onto the metadata order (:func:`~vprompt.data.benchmark_base.map_names`).

The file lists are read from torchvision's (private) attributes; :func:`_attr` names the attribute when a
torchvision release renames one.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..download import missing_folders, remove_folders_made
from ..errors import DataFileError
from .base import ArrayDataset, FileDataset
from .benchmark_base import check_listed, classnames, map_folders, map_names, missing, name_key, select_split
from .datasets import class_folders
from .registry import DatasetNotFoundError, MissingDependencyError

__all__ = [
    "aircraft",
    "caltech101",
    "cars",
    "clevr_count",
    "dtd",
    "eurosat",
    "flowers102",
    "food101",
    "gtsrb",
    "pets",
    "sun397",
    "svhn",
]

_log = logging.getLogger(__name__)

#: Where each dataset's files lie under --data-dir (torchvision's own layout; SVHN in ``svhn/``), for the errors.
LAYOUTS = {
    "flowers102": ("flowers-102", "flowers-102/{jpg/image_00001.jpg..., imagelabels.mat, setid.mat}"),
    "food101": ("food-101", "food-101/{images/<class>/<id>.jpg, meta/train.json, meta/test.json}"),
    "eurosat": ("eurosat", "eurosat/2750/<Class>/<Class>_<n>.jpg"),
    "sun397": ("SUN397", "SUN397/{ClassName.txt, <letter>/<class>[/<sub>]/sun_*.jpg}"),
    "svhn": ("svhn", "svhn/{train_32x32.mat, test_32x32.mat}"),
    "pets": ("oxford-iiit-pet", "oxford-iiit-pet/{images/*.jpg, annotations/trainval.txt, annotations/test.txt}"),
    "dtd": ("dtd", "dtd/dtd/{images/<class>/*.jpg, labels/{train,val,test}<1-10>.txt}"),
    "clevr_count": ("clevr", "clevr/CLEVR_v1.0/{images/{train,val}/*.png, scenes/CLEVR_{train,val}_scenes.json}"),
    "gtsrb": (
        "gtsrb",
        "gtsrb/{GTSRB/Training/000NN/*.ppm, GTSRB/Final_Test/Images/*.ppm, GT-final_test.csv}",
    ),
    "cars": (
        "stanford_cars",
        "stanford_cars/{cars_train/, cars_test/, cars_test_annos_withlabels.mat, devkit/{cars_meta.mat, "
        "cars_train_annos.mat}}",
    ),
    "aircraft": (
        "fgvc-aircraft-2013b",
        "fgvc-aircraft-2013b/data/{images/*.jpg, variants.txt, images_variant_{train,val,test}.txt}",
    ),
    "caltech101": ("caltech101", "caltech101/101_ObjectCategories/<class>/image_0001.jpg..."),
}
#: The datasets held in MATLAB files, which torchvision reads with scipy.
NEEDS_SCIPY = ("flowers102", "svhn", "cars")


_COMPLETE_IT = "complete the folder, or delete it and pass --download"


def _open(name: str, root: Path, download: bool | str, make: Callable[[], Any]) -> Any:
    """Run torchvision's constructor, turning its "not found" errors into one clear :class:`DatasetNotFoundError`.

    ``download`` is True/False, or a string saying why no download exists (SUN397, Stanford Cars).
    """
    sub, layout = LAYOUTS[name]
    if isinstance(download, str):
        hint: str | None = download
    else:
        hint = "the download did not produce them" if download else "--download fetches them"
    # Checked first: torchvision's StanfordCars turns the ImportError into a RuntimeError like "not found".
    if name in NEEDS_SCIPY and importlib.util.find_spec("scipy") is None:
        raise MissingDependencyError(f"dataset {name} reads MATLAB files and needs scipy: pip install scipy")
    folder = root / sub
    created = missing_folders(folder)
    # --data-dir given as the dataset's own folder, not the one that holds it
    inside = root.name == sub and root != root.parent
    own = f"--data-dir {root} may be the dataset's own folder: give the one above it, {root.parent}" if inside else ""
    try:
        return make()
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (a file missing, or failing its MD5)
        hints = "; ".join(h for h in (hint, own) if h) or None
        raise missing(name, folder, layout, hints, what="files not found or damaged") from e
    except DataFileError:  # (told already, naming the file)
        raise
    except OSError as e:  # a failed download (URLError) or a file torchvision expected
        remove_folders_made(created)  # (the empty folders a download that never started leaves)
        if isinstance(download, str):
            fix = download
        elif download and not folder.exists():  # (a download that never started: nothing to complete or delete)
            fix = "run again where the download can be reached, or copy the files there"
        else:
            fix = "complete the folder, or delete it and run again to download it" if download else _COMPLETE_IT
        raise DatasetNotFoundError(
            f"dataset {name}: reading/downloading into {folder} failed: {e} (expected {layout}; "
            + "; ".join(h for h in (fix, own) if h)
            + ")"
        ) from e
    except (KeyError, IndexError, ValueError) as e:  # a list file's line, or a file, its parser does not expect
        raise DataFileError(
            f"dataset {name}: torchvision could not read the files under {folder}: {type(e).__name__} {e} (expected "
            f"{layout}; a list file with a line of another form or naming an unknown class, or a file or folder "
            "that is not the dataset's: fix or remove it)"
        ) from e


def _attr(ds: Any, name: str) -> Any:
    try:
        return getattr(ds, name)
    except AttributeError:
        raise RuntimeError(
            f"{type(ds).__name__} of torchvision has no attribute {name!r} any more; vprompt needs an update"
        ) from None


def _files(name: str, paths: Any, labels: Any, transform: Callable[..., Any] | None) -> FileDataset:
    samples = [(str(p), int(y)) for p, y in zip(paths, labels)]
    check_listed(f"dataset {name} (torchvision's list of its files)", [p for p, _ in samples], _COMPLETE_IT)
    return FileDataset(samples, classnames(name), transform)


def flowers102(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """Oxford Flowers-102, official train / val / test; labels are ``imagelabels.mat`` - 1 (CLIP's order)."""
    from torchvision.datasets import Flowers102

    ds = _open("flowers102", root, download, lambda: Flowers102(str(root), split=split, download=download))
    return _files("flowers102", _attr(ds, "_image_files"), _attr(ds, "_labels"), transform)


def food101(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """Food-101, official train / test."""
    from torchvision.datasets import Food101

    ds = _open("food101", root, download, lambda: Food101(str(root), split=split, download=download))
    to_ours = map_names("food101", ds.classes)
    return _files("food101", _attr(ds, "_image_files"), [to_ours[y] for y in _attr(ds, "_labels")], transform)


def dtd(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    partition: int = 1,
):
    """Describable Textures, official train / val / test of partition ``partition`` (1, as the literature)."""
    from torchvision.datasets import DTD

    if str(partition) not in {str(k) for k in range(1, 11)}:
        raise ValueError(
            f"dataset dtd: --dataset-option partition={partition!r} must be one of 1..10 (DTD's ten splits)"
        )
    ds = _open("dtd", root, download, lambda: DTD(str(root), split=split, partition=int(partition), download=download))
    to_ours = map_names("dtd", ds.classes)
    return _files("dtd", _attr(ds, "_image_files"), [to_ours[y] for y in _attr(ds, "_labels")], transform)


def pets(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """Oxford-IIIT Pets, official trainval (our ``train``) / test; labels are the annotation CLASS-ID - 1."""
    from torchvision.datasets import OxfordIIITPet

    tv_split = "trainval" if split == "train" else split
    ds = _open("pets", root, download, lambda: OxfordIIITPet(str(root), split=tv_split, download=download))
    names = classnames("pets")
    # torchvision titles the names it finds in the files ("German Shorthaired"); with every class present they
    # must agree with the clean list position by position, or the CLASS-ID order is not the one we assume.
    if len(ds.classes) == len(names) and [name_key(c) for c in ds.classes] != [name_key(c) for c in names]:
        raise ValueError(f"dataset pets: the annotation class order {ds.classes[:3]}... differs from {names[:3]}...")
    return _files("pets", _attr(ds, "_images"), _attr(ds, "_labels"), transform)


def gtsrb(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """GTSRB, official train / test; the label is the ClassId (the 5-digit training folder, the test CSV column)."""
    from torchvision.datasets import GTSRB

    ds = _open("gtsrb", root, download, lambda: GTSRB(str(root), split=split, download=download))
    samples = _attr(ds, "_samples")
    paths = [p for p, _ in samples]
    # torchvision numbers the training folders it finds 0..k-1; the folder name is the ClassId even when some
    # folders are missing.
    odd = [Path(p).parent for p in paths if not Path(p).parent.name.isdigit()] if split == "train" else []
    if odd:
        raise DataFileError(f"dataset gtsrb: {odd[0]} is not a class folder (named by its ClassId, 00000-00042)")
    labels = [int(Path(p).parent.name) for p in paths] if split == "train" else [y for _, y in samples]
    return _files("gtsrb", paths, labels, transform)


def cars(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """Stanford Cars, official train / test; labels are the annotation class - 1 (``devkit/cars_meta.mat`` order).

    torchvision cannot download it (the original site is gone): place the files by hand (docs/DATASETS.md).
    """
    from torchvision.datasets import StanfordCars

    why = "Stanford Cars has no working download; copy the files there by hand, see docs/DATASETS.md"
    ds = _open("cars", root, why, lambda: StanfordCars(str(root), split=split, download=False))
    names = classnames("cars")
    if [name_key(c) for c in ds.classes] != [name_key(c) for c in names]:
        _log.warning("cars: devkit/cars_meta.mat class names differ from the clean list; labels follow its order")
    paths, labels = zip(*_attr(ds, "_samples")) if len(ds) else ((), ())
    return _files("cars", paths, labels, transform)


def aircraft(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """FGVC-Aircraft (2013b), 100 variants, official train / val / test."""
    from torchvision.datasets import FGVCAircraft

    ds = _open(
        "aircraft",
        root,
        download,
        lambda: FGVCAircraft(str(root), split=split, annotation_level="variant", download=download),
    )
    to_ours = map_names("aircraft", ds.classes)
    return _files("aircraft", _attr(ds, "_image_files"), [to_ours[y] for y in _attr(ds, "_labels")], transform)


def clevr_count(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """CLEVR object counting as in VTAB: label = number of objects - 3 (3..10 objects, 8 classes). ``train`` is
    CLEVR's train (70,000), ``test`` is CLEVR's val (15,000; CLEVR's own test has no scene annotations)."""
    from torchvision.datasets import CLEVRClassification

    tv_split = "val" if split == "test" else split

    def make() -> Any:
        try:
            return CLEVRClassification(str(root), split=tv_split, download=download)
        except KeyError as e:  # torchvision reads every file of the images folder, a stray ._x.png or .DS_Store too
            folder = root / LAYOUTS["clevr_count"][0] / "CLEVR_v1.0" / "images" / tv_split
            raise DataFileError(
                f"dataset clevr_count: {folder / str(e.args[0])} has no scene in CLEVR_{tv_split}_scenes.json; "
                "remove it (not an image of CLEVR)"
            ) from e

    ds = _open("clevr_count", root, download, make)
    if not _attr(ds, "_image_files"):
        raise missing("clevr_count", root / LAYOUTS["clevr_count"][0], LAYOUTS["clevr_count"][1],
                      f"no images in its images/{tv_split}/", what="files not found")  # fmt: skip
    counts = _attr(ds, "_labels")
    if any(c is None or not 3 <= c <= 10 for c in counts):
        raise ValueError("dataset clevr_count: scenes with fewer than 3 or more than 10 objects (or without scenes)")
    return _files("clevr_count", _attr(ds, "_image_files"), [c - 3 for c in counts], transform)


def svhn(root: Path, split: str = "train", transform: Callable[..., Any] | None = None, download: bool = False):
    """SVHN (cropped digits), official train / test, in memory (32x32); label = the digit."""
    from torchvision.datasets import SVHN

    folder = root / "svhn"
    ds = _open("svhn", root, download, lambda: SVHN(str(folder), split=split, download=download))
    return ArrayDataset(torch.from_numpy(ds.data), ds.labels, classnames("svhn"))


# ------------------------------------------------------------------------- datasets split by the shipped files
def eurosat(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    split_file: str | None = None,
):
    """EuroSAT (RGB, 27,000 images); train / val / test from the shipped stratified split of the sorted files."""
    from torchvision.datasets import EuroSAT

    ds = _open("eurosat", root, download, lambda: EuroSAT(str(root), download=download))
    to_ours = map_folders("eurosat", ds.classes)
    paths = [p for p, _ in ds.samples]
    labels = [to_ours[y] for _, y in ds.samples]
    keep = select_split("eurosat", root / "eurosat" / "2750", labels, split, split_file)
    return _files("eurosat", [paths[i] for i in keep], [labels[i] for i in keep], transform)


def sun397(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    split_file: str | None = None,
):
    """SUN397 (108,754 images); train / val / test from the shipped split of the files sorted by path.

    torchvision's download URL is dead (pytorch/vision#9348): extract the files by hand (docs/DATASETS.md).
    """
    from torchvision.datasets import SUN397

    why = (
        "the official download is dead (pytorch/vision#9348); extract an official copy of SUN397.tar.gz by hand "
        f"(tar -xzf SUN397.tar.gz -C {root}), see docs/DATASETS.md"
    )
    ds = _open("sun397", root, why, lambda: SUN397(str(root), download=False))
    base = root / "SUN397"
    # torchvision lists the files in file-system order; the split indexes them sorted by relative path.
    rel = sorted(Path(p).relative_to(base).as_posix() for p in _attr(ds, "_image_files"))
    # The class of "a/apartment_building/outdoor/sun_x.jpg" is "apartment_building/outdoor" (as torchvision).
    labels = map_names("sun397", ["/".join(r.split("/")[1:-1]) for r in rel])
    keep = select_split("sun397", base, labels, split, split_file)
    return _files("sun397", [base / rel[i] for i in keep], [labels[i] for i in keep], transform)


def caltech101(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    split_file: str | None = None,
):
    """Caltech101 (101 classes without BACKGROUND_Google, 8,677 images); train / val / test from the shipped
    stratified split of torchvision's order (sorted class folders, each one's image_0001.jpg, image_0002.jpg, ...).
    The images are the files there (hidden ones and other files left out); torchvision fetches a missing copy."""
    from torchvision.datasets import Caltech101

    folder = root / "caltech101" / "101_ObjectCategories"
    if not folder.is_dir():
        if not download:  # torchvision would create root/caltech101 before failing
            raise missing("caltech101", root / "caltech101", LAYOUTS["caltech101"][1])
        _open("caltech101", root, download, lambda: Caltech101(str(root), target_type="category", download=True))
    # Listed here, not taken from torchvision: it counts every entry of a class folder (a .DS_Store, Thumbs.db) and
    # makes up image_<n>.jpg from the count, and fails on a copy without the BACKGROUND_Google folder.
    categories = [p.name for p in class_folders(folder) if p.name != "BACKGROUND_Google"]
    to_ours = map_folders("caltech101", categories)
    paths, labels = [], []
    for c, category in enumerate(categories):
        images = sorted(f for f in (folder / category).glob("image_*.jpg") if f.is_file())
        paths += images
        labels += [to_ours[c]] * len(images)
    keep = select_split("caltech101", folder, labels, split, split_file)
    return _files("caltech101", [paths[i] for i in keep], [labels[i] for i in keep], transform)
