"""Dataset building blocks shared by every dataset of the registry.

Every dataset the registry returns is a map-style ``torch.utils.data.Dataset`` whose items are
``(uint8 image tensor (C, H, W), int label)`` and which carries ``targets`` (all labels, without decoding any
image) and ``classnames``. Two kinds:

* :class:`ArrayDataset`: all images in memory as one uint8 tensor of a single size (CIFAR, MNIST, digits,
  synthetic). The training loop moves it to the device once and resizes batches there.
* :class:`FileDataset`: images decoded on demand (by DataLoader workers) and brought to the prompter's image
  size by :func:`build_transform`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataFileError

__all__ = ["ArrayDataset", "FileDataset", "LabeledSubset", "build_transform", "subset", "load_rgb"]


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 tensor ``(N, C, H, W)`` (C = 1 or 3) with integer labels.

    Args:
        images: uint8 array ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` tensor/ndarray. NumPy arrays are
            taken as channels-last, tensors with 3 or fewer leading-channel entries as channels-first.
        targets: ``(N,)`` integer labels.
        classnames: one name per class.
    """

    def __init__(
        self, images: np.ndarray | Tensor, targets: Sequence[int] | np.ndarray | Tensor, classnames: Sequence[str]
    ):
        imgs = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
        if imgs.dtype != torch.uint8:
            raise ValueError(f"ArrayDataset needs uint8 images, got {imgs.dtype}")
        if imgs.ndim == 3:
            imgs = imgs[:, None]
        elif imgs.ndim == 4 and isinstance(images, np.ndarray):
            imgs = imgs.permute(0, 3, 1, 2)
        if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise ValueError(
                f"ArrayDataset images must be (N, H, W[, C]) with 1 or 3 channels, got {tuple(imgs.shape)}"
            )
        self.images = imgs.contiguous()
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        if len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} labels")
        self.classnames = list(classnames)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.targets[i])


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB (grayscale, palette and RGBA images are converted; 16-bit and float grayscale are
    scaled to 8 bits first, where PIL's own conversion would clip them to white). A file that cannot be decoded, or
    integer grayscale beyond 16 bits, raises a DataFileError (an OSError) that names it."""
    try:
        return _decode_rgb(path)
    except FileNotFoundError as e:
        raise DataFileError(f"{path}: no such file (moved or deleted after the data were listed?)") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # PIL's messages do not name the file
        raise DataFileError(f"{path}: cannot decode this image ({e}); replace or remove the file") from e


def _decode_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened image as RGB, as :func:`load_rgb` reads files (for images that come decoded: a hub dataset's).

    Raises:
        ValueError: integer grayscale beyond 16 bits."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I"):  # 16-bit files open as I;16 or, with older Pillow, as I
            if a.max(initial=0) > 65535 or a.min(initial=0) < 0:
                raise ValueError("integer grayscale outside 0..65535 has no one 8-bit reading; save it as 8 or 16 bits")
            a = a / 257.0  # 0..65535 -> 0..255
        elif a.max(initial=0) <= 1.01:  # float images hold 0..1 (with some overshoot) or 0..255
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


class FileDataset(Dataset):
    """Images decoded on demand from ``samples`` (path or zero-argument loader, label) pairs.

    Args:
        samples: ``(source, label)`` where source is a file path or a callable returning a PIL image.
        classnames: one name per class.
        transform: PIL image -> uint8 tensor (see :func:`build_transform`); None returns PIL images.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path | Callable[[], Image.Image], int]],
        classnames: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.targets = [int(y) for _, y in self.samples]
        self.classnames = list(classnames)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        src, label = self.samples[i]
        img = src() if callable(src) else load_rgb(src)
        return (self.transform(img) if self.transform else img), label


class LabeledSubset(Dataset):
    """A subset that keeps ``targets`` and ``classnames`` of its parent."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        parent = dataset.targets
        self.targets = [int(parent[i]) for i in self.indices]
        self.classnames = dataset.classnames

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]


def subset(dataset: Dataset, indices: Sequence[int] | Tensor) -> Dataset:
    """Restrict a dataset to ``indices``; in-memory datasets stay in memory (and on the fast path)."""
    if isinstance(dataset, ArrayDataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(dataset.images[idx], dataset.targets[idx], dataset.classnames)
    return LabeledSubset(dataset, list(map(int, indices)))


class _ToUint8:
    def __call__(self, img: Image.Image) -> Tensor:
        return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8, copy=True)).permute(2, 0, 1)


def build_transform(size: int, random_crop: bool = False) -> Callable[[Image.Image], Tensor]:
    """Decode-time transform: shorter side to ``size`` (bicubic), then a random (training) or center crop of
    ``size x size``, as a uint8 tensor. This is step 1 of EVP (the "shrink"); for VP ``size`` is the full input.
    """
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, RandomCrop, Resize

    crop = RandomCrop(size) if random_crop else CenterCrop(size)
    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), crop, _ToUint8()])
