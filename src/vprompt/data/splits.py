"""Seeded index splits: the validation split held out of the training data.

Model selection (the best epoch, a regularization strength) uses this validation split; the test split is only
reported. The indices are saved in the run folder so a run can be audited and re-created.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["holdout_split"]


def _as_long(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels), dtype=torch.long)


def holdout_split(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices ``0..N-1`` into (train, val), stratified by label.

    Each class gives ``round(fraction * n_class)`` images to validation (at least one when the fraction is
    positive and the class has two or more), chosen by a generator seeded with ``seed`` alone, so the split does
    not depend on the training seed. Both lists come back sorted.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"--val-fraction {fraction} must be in [0, 1)")
    y = _as_long(labels)
    if fraction == 0 or len(y) == 0:
        return list(range(len(y))), []
    gen = torch.Generator().manual_seed(seed)
    val: list[torch.Tensor] = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = round(fraction * len(idx))
        k = max(k, 1) if len(idx) > 1 else 0
        val.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten().tolist(), val_idx.tolist()
