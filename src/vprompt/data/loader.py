"""Batch iterators with a reproducible order per (seed, epoch) and sharding across processes.

In-memory datasets (:class:`~vprompt.data.base.ArrayDataset`) are moved to the device once and batched there:
no workers, no per-image decoding, no host-to-device copy per step. File datasets go through a
``DataLoader`` whose sampler uses the same order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import ArrayDataset
from .splits import derive_seed, torch_seed

__all__ = ["epoch_order", "DeviceBatches", "OrderSampler", "make_loader"]


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


class OrderSampler(Sampler[int]):
    """A sampler over :func:`epoch_order`; call :meth:`set_epoch` before each epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.n, self.shuffle, self.seed, self.epoch, self.rank, self.world_size).tolist())

    def __len__(self) -> int:
        return len(range(self.rank, _epoch_length(self.n, self.shuffle, self.world_size), self.world_size))


class DeviceBatches:
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

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

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
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.images[idx], self.targets[idx]


class _Loader:
    """A DataLoader with an :class:`OrderSampler`, exposing ``set_epoch`` like :class:`DeviceBatches`.

    Random crops made while decoding follow the RNG the engine seeds per (seed, epoch), the same in every process;
    with several processes each draws its crops from a stream of its own rank instead, so that the processes do
    not crop their images alike."""

    def __init__(self, loader: DataLoader, sampler: OrderSampler) -> None:
        self.loader, self.sampler = loader, sampler
        self._crop_rng: torch.Tensor | None = None  # this process's decoding RNG state (several, without workers)

    def set_epoch(self, epoch: int) -> None:
        s = self.sampler
        s.set_epoch(epoch)
        if s.world_size > 1:
            gen = torch.Generator().manual_seed(derive_seed(s.seed, f"decode:{epoch}:{s.rank}"))
            if self.loader.num_workers:
                self.loader.generator = gen  # the workers' seeds come from it
            else:
                self._crop_rng = gen.get_state()

    def in_order(self) -> _Loader:
        """The same images, each once and in order, decoded as this loader decodes them (random crops included);
        its workers start afresh at each pass, so their crops follow the RNG state seeded per (seed, epoch)."""
        s, dl = self.sampler, self.loader
        sampler = OrderSampler(s.n, False, s.seed, s.rank, s.world_size)
        loader = DataLoader(
            dl.dataset, batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers, pin_memory=dl.pin_memory
        )
        return _Loader(loader, sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._crop_rng is None:
            yield from self.loader
            return
        batches = iter(self.loader)
        while True:
            with torch.random.fork_rng(devices=[]):  # decode with this process's stream, leave the global one
                torch.set_rng_state(self._crop_rng)
                batch = next(batches, None)
                self._crop_rng = torch.get_rng_state()
            if batch is None:
                return
            yield batch


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
    sampler = OrderSampler(len(dataset), shuffle, seed, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        # Shuffled (training) loaders start fresh workers every epoch: their random crops are then seeded from the
        # RNG state the engine sets per (seed, epoch), so a resumed run crops as an uninterrupted one would.
        persistent_workers=workers > 0 and not shuffle,
    )
    return _Loader(loader, sampler)
