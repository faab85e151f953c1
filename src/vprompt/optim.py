"""Optimizers and learning-rate schedules for prompts.

* :class:`NormalizedGradient`: EVP's update ``P <- P - lr * M * g / (||g||_2 + eps)``: the L2 norm is taken
  over the whole gradient of the parameter group (every element, masked or not), then the mask is applied,
  then the step. No momentum, no weight decay.
* :class:`MaskedSGD` and :class:`MaskedAdamW`: ``torch.optim.SGD`` / ``AdamW`` that first multiply each gradient
  by its mask, so they can train an EVP prompt (the "no gradient normalization" ablations) without touching its
  center.

Masks are given as a mapping from parameter to mask (``masks={prompt: border_mask}``). They are
configuration, not state: they stay out of ``state_dict()`` and follow the parameters' device.

Schedules are per-step multipliers for ``torch.optim.lr_scheduler.LambdaLR`` (stepped once per optimizer
step, which keeps resume exact): EVP's cosine annealed per *epoch*, and VP's linear warmup then cosine per
step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .config import OPTIMIZERS, SCHEDULES

__all__ = [
    "NormalizedGradient",
    "MaskedSGD",
    "MaskedAdamW",
    "Schedule",
    "create_optimizer",
    "create_scheduler",
]


def _mask_of(masks: Mapping[Tensor, Tensor], p: Tensor) -> Tensor | None:
    mask = masks.get(p)
    return None if mask is None else mask.to(device=p.device, dtype=p.dtype)


class NormalizedGradient(Optimizer):
    """EVP's normalized-gradient descent (Wu et al., arXiv 2212.10556).

    Args:
        params: parameters or parameter groups; the norm is taken over each group as a whole.
        lr: learning rate (EVP: 70).
        eps: added to the norm (EVP: 1e-10).
        masks: parameter -> mask applied to its update after normalization.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 70.0, eps: float = 1e-10, masks: Mapping[Tensor, Tensor] | None = None
    ) -> None:
        if lr < 0:
            raise ValueError(f"--lr {lr} must be non-negative")
        super().__init__(params, {"lr": lr, "eps": eps})
        self.masks = dict(masks or {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # One norm over the whole group, accumulated in fp32 whatever the parameter dtype.
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
            scale = group["lr"] / (norm + group["eps"])
            for p in params:
                update = p.grad * scale.to(p.grad.dtype)
                mask = _mask_of(self.masks, p)
                if mask is not None:
                    update = update * mask
                p.sub_(update)
        return loss


class _MasksGradients:
    """Mixin for a ``torch.optim`` optimizer: multiply each gradient by its parameter's mask, then the usual step.

    A masked element gets no gradient step. Weight decay still acts on it, so one that is zero (a prompt's center)
    stays zero and one that is not decays.
    """

    masks: dict[Tensor, Tensor]
    param_groups: list[dict[str, Any]]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102
        # The closure recomputes the gradients, so it runs before the mask (the parent would run it after).
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                mask = _mask_of(self.masks, p)
                if mask is not None and p.grad is not None:
                    p.grad.mul_(mask)
        super().step()  # type: ignore[misc]
        return loss


class MaskedSGD(_MasksGradients, torch.optim.SGD):
    """SGD whose gradients are multiplied by their masks before the usual step."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        masks: Mapping[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.masks = dict(masks or {})


class MaskedAdamW(_MasksGradients, torch.optim.AdamW):
    """AdamW whose gradients are multiplied by their masks before the usual step.

    A masked element that starts at zero sees only zero gradients, so its moments, its update and (with decoupled
    weight decay) its value stay zero: the center of an EVP prompt is never touched.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        weight_decay: float = 0.0,
        masks: Mapping[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.masks = dict(masks or {})


def create_optimizer(
    name: str,
    params: Iterable[Any],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    masks: Mapping[Tensor, Tensor] | None = None,
) -> Optimizer:
    """Build an optimizer by name (``normgrad``, ``sgd`` or ``adamw``) over ``params``.

    Masks are honoured by all three: a masked element gets no gradient step (see :class:`_MasksGradients` for
    weight decay).
    """
    if name == "normgrad":
        return NormalizedGradient(params, lr=lr, masks=masks)
    if name == "sgd":
        return MaskedSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, masks=masks)
    if name == "adamw":
        return MaskedAdamW(params, lr=lr, weight_decay=weight_decay, masks=masks)
    raise ValueError(f"unknown --optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")


class Schedule:
    """Learning-rate multiplier as a function of the optimizer step (a picklable ``LambdaLR`` lambda).

    Args:
        name: ``cosine_epoch`` (EVP: constant within an epoch, cosine from 1 at epoch 0 towards 0 at the end),
            ``cosine`` (VP: linear warmup over ``warmup_steps``, then cosine per step to 0) or ``constant``.
        total_steps: steps in the whole run.
        steps_per_epoch: steps in one epoch.
        warmup_steps: warmup length (``cosine`` only).
    """

    def __init__(self, name: str, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown --schedule {name!r} (choose from {', '.join(SCHEDULES)})")
        self.name = name
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if self.name == "constant":
            return 1.0
        if self.name == "cosine_epoch":
            epochs = max(1, math.ceil(self.total_steps / self.steps_per_epoch))
            return 0.5 * (1 + math.cos(math.pi * (step // self.steps_per_epoch) / epochs))
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        rest = max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(step - self.warmup_steps, rest) / rest))


def create_scheduler(
    optimizer: Optimizer, name: str, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :class:`Schedule`; call ``.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(name, total_steps, steps_per_epoch, warmup_steps))
