"""Input diversity: random transformations of the raw training images, batched on the device.

EVP trains the prompt on many variants of each image so that it does not over-fit a few (the "input
diversity" trick of transferable adversarial examples). Applied in training only, before the prompter.

* ``ref``: the reference code's variant, a horizontal flip with probability 0.5. (Its other part, the random
  crop of the resized image, needs the image's full aspect ratio and therefore happens when the image is
  decoded; see :func:`vprompt.data.build_transform`.)
* ``di``: DI-FGSM's random resize-and-pad: with probability ``prob`` the image is shrunk by a random factor in
  ``[min_scale, 1]`` and placed at a random position on a black canvas of its own size. No flip, as in
  DI-FGSM: a mirrored digit, letter or traffic sign is not the same class, so ``di`` is the variant for such
  datasets.
* ``none``: identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DIVERSITIES
from .errors import did_you_mean

__all__ = ["InputDiversity", "create_diversity", "random_flip", "random_resize_pad"]


def _uniform(
    x: Tensor,
    *shape: int,
    low: float = 0.0,
    high: float = 1.0,
    shard: tuple[int, int] = (0, 1),
    real: int | None = None,
) -> Tensor:
    """Uniform draws in [low, high) for each image of ``x``. ``shard = (rank, processes)``: ``x`` is this process's
    share of a batch spread over the processes (every ``processes``-th image from ``rank``, see
    :func:`~vprompt.data.loader.epoch_order`): the draws of the whole batch are made, and this share taken, so that
    every image gets what it would get in one process, and no two processes draw alike. ``real``: the images of
    the whole batch before its padding (the end of a padded epoch), the only ones drawn for; padding gets ``high``
    (no flip, no resize), so that one process, which has no padding, draws the same numbers."""
    rank, processes = shard
    whole = x.shape[0] * processes
    draws = torch.empty(min(whole, whole if real is None else real), *shape, device=x.device).uniform_(low, high)
    if len(draws) < whole:
        draws = torch.cat([draws, draws.new_full((whole - len(draws), *shape), high)])
    return draws[rank::processes]


def random_flip(x: Tensor, prob: float = 0.5, shard: tuple[int, int] = (0, 1), real: int | None = None) -> Tensor:
    """Flip each image horizontally with probability ``prob`` (``shard``, ``real``: see :func:`_uniform`)."""
    flip = _uniform(x, 1, 1, 1, shard=shard, real=real) < prob
    return torch.where(flip, x.flip(-1), x)


def random_resize_pad(
    x: Tensor, min_scale: float = 0.9, prob: float = 0.5, shard: tuple[int, int] = (0, 1), real: int | None = None
) -> Tensor:
    """Shrink each image by a random factor in [min_scale, 1] and place it randomly on a black canvas (``shard``,
    ``real``: see :func:`_uniform`).

    One ``grid_sample`` over the whole batch: each sample gets its own scale and offset through an affine
    grid, so no per-image Python loop and no size change. The sampling runs in float32 whatever the batch's
    dtype: a bf16 grid is off by about a pixel at 224 pixels, and CPU bf16 ``grid_sample`` can read out of bounds.
    """
    b = x.shape[0]
    scale = _uniform(x, low=min_scale, shard=shard, real=real)
    apply = _uniform(x, shard=shard, real=real) < prob
    scale = torch.where(apply, scale, torch.ones_like(scale))
    # In normalized coordinates the shrunk image spans 2*scale; its center may move by up to (1 - scale).
    shift = (_uniform(x, 2, shard=shard, real=real) * 2 - 1) * (1 - scale)[:, None]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -shift / scale[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(apply[:, None, None, None], out.to(x.dtype), x)


class InputDiversity:
    """Callable applying one of the diversity variants to a float batch in [0, 1].

    Args:
        name: ``ref``, ``di`` or ``none``.
        min_scale: ``di`` only, the smallest shrink factor.
        prob: ``di`` only, the probability to resize-and-pad an image.
        shard: ``(rank, processes)`` of a run spread over several processes (see :func:`_uniform`).
    """

    def __init__(
        self, name: str = "ref", min_scale: float = 0.9, prob: float = 0.5, shard: tuple[int, int] = (0, 1)
    ) -> None:
        if name not in DIVERSITIES:
            hint = did_you_mean(name, DIVERSITIES)
            raise ValueError(f"unknown --diversity {name!r}{hint} (choose from {', '.join(DIVERSITIES)})")
        if not 0 < min_scale <= 1:
            raise ValueError(f"--di-min-scale {min_scale} must be in (0, 1]")
        if not 0 <= prob <= 1:
            raise ValueError(f"--di-prob {prob} must be in [0, 1]")
        self.name = name
        self.min_scale = min_scale
        self.prob = prob
        self.shard = shard

    @property
    def random_crop(self) -> bool:
        """Whether images should be randomly (rather than center) cropped when decoded."""
        return self.name != "none"

    def __call__(self, x: Tensor, real: int | None = None) -> Tensor:
        """``x`` with diversity applied; ``real``: the images of the batch over all processes that are not padding."""
        if self.name == "none":
            return x
        if self.name == "di":
            return random_resize_pad(x, self.min_scale, self.prob, self.shard, real)
        return random_flip(x, shard=self.shard, real=real)

    def __repr__(self) -> str:
        return f"InputDiversity({self.name!r})"


def create_diversity(name: str, **kwargs: Any) -> InputDiversity:
    """Build the diversity transform ``name`` (see :class:`InputDiversity`)."""
    return InputDiversity(name, **kwargs)
