"""Seeded index splits: the validation split held out of the training data, and the few-shot / fraction subsets.

Model selection (the best epoch, a regularization strength) uses this validation split; the test split is only
reported. The indices are saved in the run folder so a run can be audited and re-created.

Data scale (``--shots K``, ``--train-fraction F``) is applied to what remains for training *after* the validation
split is held out, so the training subset is disjoint from validation by construction. Both draws are seeded by
``--split-seed`` alone (never the training seed), through separate generators, so the subset does not change the
validation split and vice versa.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["holdout_split", "subsample_per_class", "derive_seed", "torch_seed"]


def _as_long(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels), dtype=torch.long)


def holdout_split(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices ``0..N-1`` into (train, val), stratified by label.

    Each class gives ``round(fraction * n_class)`` images to validation (at least one when the fraction is
    positive and the class has two or more, and never all: it keeps one for training), chosen by a generator
    seeded with ``seed`` alone, so the split does not depend on the training seed. Both lists come back sorted.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"--val-fraction {fraction} must be in [0, 1)")
    y = _as_long(labels)
    if fraction == 0 or len(y) == 0:
        return list(range(len(y))), []
    gen = torch.Generator().manual_seed(torch_seed(seed))
    val: list[torch.Tensor] = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = round(fraction * len(idx))
        k = min(max(k, 1), len(idx) - 1)  # every class keeps a training image
        val.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten().tolist(), val_idx.tolist()


def torch_seed(n: int) -> int:
    """``n`` as a seed PyTorch takes (64 bits): larger seeds wrap around as negative ones already do in PyTorch,
    so every seed that worked before draws what it drew, and any integer works."""
    return n % (1 << 64)


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed derived from ``(seed, purpose)``: independent streams for the different draws of one split
    seed (the holdout uses ``seed`` itself; the few-shot subset uses ``derive_seed(seed, "train-subset")``)."""
    digest = hashlib.sha256(f"vprompt:{purpose}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def subsample_per_class(
    labels: Sequence[int] | torch.Tensor,
    seed: int,
    shots: int | None = None,
    fraction: float | None = None,
    num_classes: int | None = None,
    classnames: Sequence[str] | None = None,
    held_out: Sequence[int] | torch.Tensor | None = None,
) -> list[int]:
    """Stratified subset of positions ``0..N-1``: exactly ``shots`` per class, or ``fraction`` of each class.

    Each class's positions are shuffled once by a generator seeded with :func:`derive_seed` (``seed``,
    ``"train-subset"``) and the first ``k`` are kept, so for one seed the subsets are nested: the 4-shot set
    contains the 1-shot set, the 10 % set contains the 1 % set. With ``fraction`` each class keeps
    ``round(fraction * n_class)`` images, at least one.

    Args:
        labels: the label of each position.
        seed: the split seed (independent of the training seed).
        shots: images per class (``--shots``).
        fraction: share of each class (``--train-fraction``), in (0, 1].
        num_classes: the number of classes, so that a class with no image at all is reported too.
        classnames: for error messages.
        held_out: the labels of the validation images held out of the same training data, for error messages.

    Returns:
        the chosen positions, sorted.

    Raises:
        ValueError: both or neither of ``shots`` and ``fraction``, a value out of range, or a class with fewer
            than ``shots`` images (the message names the class and its count).
    """
    if (shots is None) == (fraction is None):
        raise ValueError("give exactly one of --shots and --train-fraction")
    if shots is not None and (isinstance(shots, bool) or int(shots) != shots or shots < 1):
        raise ValueError(f"--shots {shots} must be a positive integer")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"--train-fraction {fraction} must be in (0, 1]")
    y = _as_long(labels)
    n_cls = max(int(num_classes or 0), int(y.max()) + 1 if len(y) else 0)
    counts = torch.bincount(y, minlength=n_cls) if len(y) else torch.zeros(n_cls, dtype=torch.long)
    if shots is not None and n_cls and int(counts.min()) < shots:
        c = int(torch.nonzero(counts < shots)[0])
        have, fewest = int(counts[c]), int(counts.min())
        held = int((_as_long(held_out) == c).sum()) if held_out is not None else 0
        name = f" ({classnames[c]!r})" if classnames is not None and c < len(classnames) else ""
        fixes = [f"--shots {fewest} (the fewest of any class)"] if fewest else []
        if held and have + held >= shots:
            fixes.append(f"a lower --val-fraction (validation holds {held} of its images)")
        fixes.append("more images of it" if have or held else "training images of it")
        raise ValueError(
            f"--shots {shots}: class {c}{name} has {have or 'no'} training image(s) to draw from (give "
            f"{', or '.join(fixes)})"
        )
    gen = torch.Generator().manual_seed(derive_seed(seed, "train-subset"))
    chosen: list[torch.Tensor] = []
    for c in range(n_cls):
        idx = torch.nonzero(y == c).flatten()
        if shots is not None:
            k = int(shots)
        else:
            k = min(len(idx), max(1, round(float(fraction) * len(idx)))) if len(idx) else 0
        # Always draw the whole permutation, so that the generator advances the same way for every k (nesting).
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    if not chosen:
        return []
    return torch.cat(chosen).sort().values.tolist()
