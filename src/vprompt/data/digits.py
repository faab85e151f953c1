"""Handwritten digits: MNIST (IDX files) and scikit-learn's 8x8 digits, both held in memory.

* ``mnist``: ``--data-dir`` is a folder holding the IDX files (gzip or not, detected from the content). The training
  split is the official ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (60,000 digits) when present, else
  ``train10k-images-idx3-ubyte`` / ``train10k-labels-idx1-ubyte`` (the 10,000-digit training set shipped beside this
  project); the test split is the official ``t10k-*`` (10,000). The files are looked up in ``DIR``, ``DIR/mnist``
  and ``DIR/MNIST/raw`` (torchvision's layout). Missing official files are downloaded into ``DIR/mnist`` (MD5
  verified) unless ``--no-download``. ``--dataset-option crop=N`` keeps the central N x N pixels.
* ``digits``: scikit-learn's ``load_digits()`` (1,797 digits of 8x8 pixels with values 0..16, shipped inside the
  scikit-learn wheel; needs ``pip install 'vprompt[digits]'``). It has no official test split, so a fixed,
  stratified one is drawn with seed 0: 500 test / 1,297 train digits (``--dataset-option test_size=N`` and
  ``--dataset-option test_seed=S`` change it). Pixel values are scaled to 0..255 (``round(v * 255 / 16)``).

Class names are the digits ``"0"`` .. ``"9"``, as in CLIP's own MNIST evaluation, whose one template
``a photo of the number: "{}".`` is the ``--templates ensemble`` of both datasets.

MNIST: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits".
Digits: the UCI "Optical Recognition of Handwritten Digits" test set, as packaged by scikit-learn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..download import DigestMismatch, download_verified
from .base import ArrayDataset
from .idx import read_idx
from .registry import DatasetNotFoundError, DatasetSpec, register_dataset, whole_option

__all__ = ["mnist_dataset", "digits_dataset", "find_mnist_files", "DIGIT_CLASSES", "MNIST_MIRRORS", "MNIST_MD5"]

_log = logging.getLogger(__name__)

DIGIT_CLASSES = tuple(str(d) for d in range(10))
#: CLIP's MNIST prompt (the CLIP paper's evaluation), used for ``--templates ensemble``.
DIGIT_TEMPLATES = ('a photo of the number: "{}".',)

#: Where the official files are served (tried in order).
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")
#: MD5 of the official gzip files, checked after a download.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: File stems per split, preferred first.
_MNIST_PREFIXES = {"train": ("train", "train10k"), "test": ("t10k",)}


# --------------------------------------------------------------------------------------------------------------
# MNIST


def _stem(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _pair(folder: Path, prefix: str) -> tuple[Path | None, Path | None]:
    """The images and labels files of ``prefix`` in ``folder``, both plain or both gzipped where such a pair is
    there (a file of one form beside the pair of the other is a copy of another age), else each as it is found."""
    stems = _stem(prefix, "images"), _stem(prefix, "labels")
    for suffix in ("", ".gz"):
        images, labels = (folder / f"{stem}{suffix}" for stem in stems)
        if images.is_file() and labels.is_file():
            return images, labels
    return _find(folder, stems[0]), _find(folder, stems[1])


def _search_folders(root: Path) -> list[Path]:
    return [root, root / "mnist", root / "MNIST" / "raw"]


def _pairs(root: Path, split: str) -> Iterator[tuple[str, Path | None, Path | None]]:
    """(prefix, images file, labels file) for each file prefix of ``split`` and searched folder, in the order
    preferred (the official files in any folder before train10k in any); a file that is not there is None."""
    for prefix in _MNIST_PREFIXES[split]:
        for folder in _search_folders(root):
            yield prefix, *_pair(folder, prefix)


def find_mnist_files(root: str | Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``split`` under ``root`` in the order of :func:`_pairs`, or None."""
    return next(((i, lab) for _, i, lab in _pairs(Path(root), split) if i and lab), None)


def _half_pairs(root: Path, split: str) -> list[str]:
    """'found X but not Y' for each folder under ``root`` that holds one file of a pair without the other."""
    return [
        f"found {images or labels} but not {_stem(prefix, 'labels' if images else 'images')}[.gz] beside it"
        for prefix, images, labels in _pairs(root, split)
        if bool(images) != bool(labels)
    ]


def _download(name: str, folder: Path) -> Path:
    """Fetch one official file into ``folder``, from the first mirror that serves it with the published MD5."""
    errors = []
    for mirror in MNIST_MIRRORS:
        try:
            return download_verified(mirror + name, folder / name, MNIST_MD5[name], "md5")
        except (DigestMismatch, OSError) as e:
            errors.append(str(e) if isinstance(e, DigestMismatch) else f"{mirror + name}: {e}")
    raise DatasetNotFoundError(
        f"dataset mnist: could not download {name} ({'; '.join(errors)}); put the IDX files in a folder and pass "
        "it as --data-dir"
    )


def _check_pair(images: np.ndarray, labels: np.ndarray, paths: tuple[Path, Path]) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{paths[0]}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{paths[1]}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{paths[1]}: label {int(labels.max())} is not a digit 0..9")


def mnist_dataset(
    root: Path,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    crop: int | str | None = None,
) -> ArrayDataset:
    """MNIST from IDX files under ``root`` (see the module doc), as a 1-channel uint8 :class:`ArrayDataset`;
    ``crop`` keeps the central ``crop`` x ``crop`` pixels (20: the box NIST's digits were scaled into, without the
    black margin that centring them in 28 x 28 added)."""
    root = Path(root)
    if crop not in (None, ""):
        whole_option("mnist", "crop", crop, 1)  # told before a download; the bound is the images' side (below)
    found = find_mnist_files(root, split)
    half = "".join(f"; {note}" for note in _half_pairs(root, split))  # (a file whose other half is missing)
    if found is not None and half:
        _log.warning("mnist %s: reading %s and %s%s", split, *found, half)
    if found is None:
        prefix = _MNIST_PREFIXES[split][0]
        names = [f"{_stem(prefix, kind)}.gz" for kind in ("images", "labels")]
        if not download:
            where = ", ".join(str(f) for f in _search_folders(root))
            alt = " (or train10k-*)" if split == "train" else ""
            raise DatasetNotFoundError(
                f"dataset mnist: no {names[0][:-3]}[.gz] and {names[1][:-3]}[.gz]{alt} in {where}{half}; pass "
                "--data-dir to the folder holding them, or allow the download (--download)"
            )
        _log.info("mnist: downloading the official %s files into %s", split, root / "mnist")
        # A file an earlier, interrupted download completed (renamed into place only once its MD5 matched) is kept.
        try:
            found = tuple(_find(root / "mnist", name[:-3]) or _download(name, root / "mnist") for name in names)
        except DatasetNotFoundError as e:
            raise DatasetNotFoundError(f"{e}{half}") from None
    images, labels = read_idx(found[0]), read_idx(found[1])
    _check_pair(images, labels, found)
    _log.info("mnist %s: %d digits from %s and %s", split, len(labels), *found)
    if crop not in (None, ""):
        side = whole_option("mnist", "crop", crop, 1, min(images.shape[1:]))  # pixels
        top, left = (images.shape[1] - side) // 2, (images.shape[2] - side) // 2
        images = np.ascontiguousarray(images[:, top : top + side, left : left + side])
    return ArrayDataset(images, labels.astype(np.int64), DIGIT_CLASSES)


register_dataset(
    DatasetSpec(
        name="mnist",
        builder=mnist_dataset,
        num_classes=10,
        classnames=DIGIT_CLASSES,
        templates=DIGIT_TEMPLATES,
        description="MNIST digits from IDX files in --data-dir (60,000 or train10k / 10,000 test, 28x28 gray)",
        options={"crop": ""},
    )
)


# --------------------------------------------------------------------------------------------------------------
# scikit-learn digits


def _stratified_test_indices(labels: np.ndarray, test_size: int, seed: int) -> np.ndarray:
    """Exactly ``test_size`` indices, each class contributing in proportion to its size (largest remainders get the
    leftover places, lower class first on ties), chosen within each class by a generator seeded with ``seed``."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * test_size / len(labels)
    take = np.floor(share).astype(int)
    leftover = test_size - int(take.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(share[i] - take[i]), i))
    for i in order[:leftover]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def digits_dataset(
    root: Path | None = None,
    split: str = "train",
    transform: Callable[..., Any] | None = None,
    download: bool = False,
    test_size: int = 500,
    test_seed: int = 0,
) -> ArrayDataset:
    """scikit-learn's 8x8 digits with a fixed stratified train/test split (see the module doc)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFoundError(
            "dataset digits needs scikit-learn (its data ships in the wheel): pip install 'vprompt[digits]'"
        ) from None
    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    test_size = whole_option("digits", "test_size", test_size, 1, len(labels) - 1)
    test_seed = whole_option("digits", "test_seed", test_seed, 0)
    images = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    test_idx = _stratified_test_indices(labels, test_size, test_seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    keep = mask if split == "test" else ~mask
    return ArrayDataset(images[keep], labels[keep], DIGIT_CLASSES)


register_dataset(
    DatasetSpec(
        name="digits",
        builder=digits_dataset,
        num_classes=10,
        classnames=DIGIT_CLASSES,
        templates=DIGIT_TEMPLATES,
        description="scikit-learn's 8x8 digits, 1,297 train / 500 test (fixed stratified split; needs scikit-learn)",
        options={"test_size": "500", "test_seed": "0"},
        reads_files=False,
    )
)
