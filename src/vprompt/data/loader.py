"""Batch iterators with a reproducible order per (seed, epoch) and sharding across processes.

In-memory datasets (:class:`~vprompt.data.base.ArrayDataset`) are moved to the device once and batched there:
no workers, no per-image decoding, no host-to-device copy per step. File datasets go through a
``DataLoader`` whose sampler uses the same order and gives each image the seed of its random crop, drawn from
(seed, epoch, place in the epoch's global order): an image is cropped alike whatever the number of processes
or workers, and on a resumed run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import ArrayDataset
from .splits import derive_seed, torch_seed

__all__ = ["PAD_LABEL", "epoch_order", "DeviceBatches", "OrderSampler", "SeededDecoding", "make_loader"]

#: The label of an image repeated to pad a training epoch to a multiple of the processes: it keeps every process
#: taking the same steps, and the loss, the counts and input diversity leave it out (N processes train as one).
PAD_LABEL = -100


def _epoch_length(n: int, shuffle: bool, world_size: int) -> int:
    """Indices in one epoch over all processes: ``n``, padded to a multiple of ``world_size`` when shuffled."""
    return -(-n // world_size) * world_size if shuffle else n


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """The indices one process visits in one epoch: a permutation seeded by (seed, epoch), then every
    ``world_size``-th element from ``rank``.

    A shuffled (training) order is first padded by wrapping around to a multiple of ``world_size``, so that every
    process takes the same number of steps with batches of the same size (each step all-reduces the gradient);
    an unshuffled (evaluation) order is not, so evaluation counts every sample exactly once."""
    if shuffle:
        gen = torch.Generator().manual_seed(torch_seed(seed * 1_000_003 + epoch))
        order = torch.randperm(n, generator=gen)
        total = _epoch_length(n, shuffle, world_size)
        if total != n:
            order = order.repeat(-(-total // n))[:total]
    else:
        order = torch.arange(n)
    return order[rank::world_size]


class OrderSampler(Sampler):
    """A sampler over :func:`epoch_order`; call :meth:`set_epoch` before each epoch.

    With ``keyed`` it yields ``(index, decode seed)`` pairs for :class:`SeededDecoding`: the seed is drawn from
    (seed, epoch, the image's place in the order of all processes), so that N processes decode the images of a
    global batch as one process does."""

    def __init__(
        self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, keyed: bool = False
    ) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.keyed, self.epoch = keyed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int, bool]]:
        order = epoch_order(self.n, self.shuffle, self.seed, self.epoch, self.rank, self.world_size).tolist()
        if not self.keyed:
            return iter(order)
        stream = f"decode:{'train' if self.shuffle else 'in-order'}:{self.epoch}"
        places = range(self.rank, self.rank + len(order) * self.world_size, self.world_size)
        return iter(
            [(i, derive_seed(self.seed, f"{stream}:{p}"), p >= self.n) for i, p in zip(order, places, strict=True)]
        )

    def __len__(self) -> int:
        return len(range(self.rank, _epoch_length(self.n, self.shuffle, self.world_size), self.world_size))

    def real_images(self, step: int, batch_size: int) -> int:
        """Images of step ``step``'s batch over all processes (``batch_size`` each) that are not padding."""
        whole = batch_size * self.world_size
        return max(0, min(whole, self.n - step * whole))


class SeededDecoding(Dataset):
    """``dataset``, indexed by ``(index, seed)``: each image is decoded (randomly cropped) under the global RNG
    seeded with its own seed, which is left as it was. Its crop then depends on that seed only, not on the
    process, the worker or the images decoded before it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, bool]):
        index, seed, pad = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU's only: torch.manual_seed would reseed every GPU
            image, label = self.dataset[index]
        return image, PAD_LABEL if pad else label


class _Batches:
    """What both loaders share: an :class:`OrderSampler` (``sampler``) and a batch size per process."""

    sampler: OrderSampler
    batch_size: int

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def real_images(self, step: int) -> int:
        """Images of step ``step``'s batch over all processes that are not padding (see :data:`PAD_LABEL`)."""
        return self.sampler.real_images(step, self.batch_size)


class DeviceBatches(_Batches):
    """Batches of an in-memory dataset, sliced on the device.

    Args:
        dataset: the in-memory dataset; its images are copied to ``device`` once.
        batch_size: images per batch (per process).
        shuffle: visit in a seeded random order.
        seed: the order's seed (combined with the epoch).
        device: where batches live.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images = dataset.images.to(device)
        self.targets = dataset.targets.to(device)
        self.sampler = OrderSampler(len(dataset), shuffle, seed, rank, world_size)
        self.batch_size = batch_size

    def in_order(self) -> DeviceBatches:
        """The same images, each once and in order (no shuffle, no padding), sharing this loader's device copy."""
        s, other = self.sampler, copy.copy(self)
        other.sampler = OrderSampler(s.n, False, s.seed, s.rank, s.world_size)
        return other

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        s = self.sampler
        order = epoch_order(s.n, s.shuffle, s.seed, s.epoch, s.rank, s.world_size).to(self.images.device)
        real = len(range(s.rank, s.n, s.world_size))  # this process's images before its padding
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            targets = self.targets[idx]
            if i + len(idx) > real:
                targets = targets.clone()
                targets[max(0, real - i) :] = PAD_LABEL
            yield self.images[idx], targets


class _Loader(_Batches):
    """A DataLoader of a :class:`SeededDecoding` dataset with a keyed :class:`OrderSampler`, exposing ``set_epoch``
    like :class:`DeviceBatches`. ``persistent``: its workers live from epoch to epoch (the crops do not depend on
    their state)."""

    def __init__(
        self, dataset: SeededDecoding, batch_size: int, sampler: OrderSampler, workers: int, pin_memory: bool,
        persistent: bool,
    ) -> None:  # fmt: skip
        self.sampler, self.batch_size = sampler, batch_size
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent and workers > 0,
            generator=torch.Generator(),  # for the workers' base seed, else drawn from the global RNG
        )

    def in_order(self) -> _Loader:
        """The same images, each once and in order, decoded as this loader decodes them (random crops included,
        seeded per (seed, epoch) of their own: call ``set_epoch``)."""
        s, dl = self.sampler, self.loader
        sampler = OrderSampler(s.n, False, s.seed, s.rank, s.world_size, keyed=True)
        return _Loader(dl.dataset, dl.batch_size, sampler, dl.num_workers, dl.pin_memory, persistent=False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.loader)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
) -> DeviceBatches | _Loader:
    """Batches of ``(uint8 images (B, C, H, W), labels (B,))``; in-memory datasets are served from the device."""
    if isinstance(dataset, ArrayDataset):
        return DeviceBatches(dataset, batch_size, shuffle, seed, device, rank, world_size)
    from ..distributed import usable_cpus

    sampler = OrderSampler(len(dataset), shuffle, seed, rank, world_size, keyed=True)
    pin_memory = torch.device(device).type == "cuda"
    # no more decoding processes than the cores this process may use (more only contend for them, and PyTorch
    # warns at each loader); each image's crop is seeded by its key, so the batches are the same either way
    workers = min(workers, usable_cpus())
    return _Loader(SeededDecoding(dataset), batch_size, sampler, workers, pin_memory, persistent=True)
