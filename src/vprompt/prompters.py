"""Visual prompters: pixels in [0, 1] in, prompted pixels in [0, 1] space out.

A prompter never normalizes; the frozen backbone wrapper applies the backbone's own mean/std afterwards.
Every prompter accepts a batch ``(B, C, H, W)`` of any square or non-square size and first brings it to the
size it works at (:attr:`Prompter.image_size`), so datasets can hand over images at their native size and the
resize runs batched on the device.

Prompters:
    * ``evp``: EVP (Wu et al., 2212.10556). Shrink the image to ``s x s``, zero-pad it to ``S x S`` and add a
      zero-initialized ``S x S`` prompt whose border only is ever updated, so the prompt is "wrapped around"
      the image, never added on top of it.
    * ``pad``: VP padding (Bahng et al., 2022). A border of width ``p`` added on top of the full-size image.
    * ``fixed_patch`` / ``random_patch``: VP patch prompts, a ``p x p`` square added on top of the image at
      the top-left corner / at a random place each training batch.
    * ``none``: no prompt (zero-shot and label-mapping baselines); only resizes to ``S x S``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import did_you_mean

__all__ = [
    "Prompter",
    "EVPPrompter",
    "PadPrompter",
    "FixedPatchPrompter",
    "RandomPatchPrompter",
    "IdentityPrompter",
    "create_prompter",
    "list_prompters",
    "resize_square",
    "default_inner_size",
]


def resize_square(x: Tensor, size: int) -> Tensor:
    """Resize a float image batch so its shorter side is ``size`` (bicubic), then center-crop ``size x size``.

    The bicubic kernel is PIL's (the one file datasets are decoded with, and the reference code's resize), in
    both directions: PyTorch's plain bicubic upsampling uses another (a = -0.75). It is computed in float32 at
    least (PyTorch has it for no lower precision on the CPU) and without PIL's rounding to 8 bits between the
    horizontal and vertical passes. Bicubic overshoots, so the result is clamped back to [0, 1] as an 8-bit image
    library would. Returns ``x`` itself when it already has the size, which keeps the common path free.
    """
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    x = F.interpolate(wide, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).to(x.dtype)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0.0, 1.0)


def default_pad(input_size: int) -> int:
    """The default prompt width for a backbone input size: the papers' 30 pixels at 224, the same share elsewhere."""
    return max(1, round(input_size * 30 / 224))


def default_inner_size(input_size: int) -> int:
    """EVP's inner image size for a backbone input size: 164 for 224, the same ratio elsewhere, even border."""
    return input_size - 2 * default_pad(input_size)


def _border_mask(size: int, width: int) -> Tensor:
    mask = torch.ones(1, 1, size, size)
    mask[..., width : size - width, width : size - width] = 0.0
    return mask


def _scale_buffer(scale: Sequence[float] | None, channels: int) -> Tensor:
    if scale is None:
        return torch.ones(1, channels, 1, 1)
    t = torch.as_tensor(list(scale), dtype=torch.float32)
    if t.numel() not in (1, channels):
        raise ValueError(f"prompt scale has {t.numel()} values; expected 1 or {channels} (one per channel)")
    return t.expand(channels).clone().view(1, channels, 1, 1)


class Prompter(nn.Module):
    """Base class. Subclasses set ``input_size`` (S, the size they output) and ``image_size`` (what they resize
    the incoming images to) and implement :meth:`forward`.
    """

    name: str = "base"
    input_size: int
    image_size: int

    def grad_masks(self) -> dict[str, Tensor]:
        """Per-parameter masks the optimizer applies to each update (parameter name -> mask buffer)."""
        return {}

    def num_values(self) -> int:
        """How many prompt values training can change (a masked prompt counts its border only)."""
        mask, prompt = getattr(self, "mask", None), getattr(self, "prompt", None)
        if isinstance(mask, Tensor) and isinstance(prompt, Tensor):
            return int(mask.expand_as(prompt).sum().item())
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def prompt_pixels(self) -> Tensor:
        """What the prompt adds to a black image, ``(3, S, S)`` in pixel units, for visualization."""
        device = next(iter(self.buffers()), torch.empty(0)).device
        black = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(black)
        self.train(was_training)
        return out[0]

    def geometry(self) -> dict[str, int]:
        """The sizes that define this prompter (config keys): saved with a run, so that its prompt loads the same
        way even if a default changes."""
        out = {"input_size": self.input_size}
        if getattr(self, "pad", None) is not None:
            out["prompt_size"] = int(self.pad)
        if getattr(self, "patch", None) is not None:
            out["prompt_size"] = int(self.patch)
        if "prompt_size" in out and self.image_size != self.input_size:  # EVP: the shrunk image
            out["inner_size"] = self.image_size
        return out

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, image_size={self.image_size}"


class EVPPrompter(Prompter):
    """EVP: shrink to ``s``, zero-pad to ``S``, add a zero-initialized prompt updated on its border only.

    The prompt is a full ``S x S x 3`` tensor and the forward pass is ``pad(x) + P`` over all of it, as in the
    paper: the gradient-normalization step takes the L2 norm of the *whole* gradient (center included) and
    only then masks it, so the mask lives in the optimizer (:meth:`grad_masks`), not in the forward pass. With
    the masked update the center of ``P`` stays exactly zero.

    Args:
        input_size: S, the backbone's input size.
        inner_size: s, the size the image is shrunk to; ``S - s`` must be positive and even.
    """

    name = "evp"

    def __init__(self, input_size: int = 224, inner_size: int | None = None) -> None:
        super().__init__()
        if inner_size is None:
            inner_size = default_inner_size(input_size)
            if inner_size < 1:
                raise ValueError(
                    f"--input-size {input_size} is too small for EVP's border and an image inside it: give at least 3"
                )
        if not 0 < inner_size < input_size:
            raise ValueError(
                f"--inner-size {inner_size} must be smaller than --input-size {input_size} (and positive): "
                "EVP wraps the prompt around the shrunk image"
            )
        if (input_size - inner_size) % 2:
            raise ValueError(
                f"--input-size {input_size} minus --inner-size {inner_size} must be even so the border is the same "
                f"width on every side; try --inner-size {inner_size - 1 if inner_size > 1 else 2}"
            )
        self.input_size = input_size
        self.image_size = inner_size
        self.pad = (input_size - inner_size) // 2
        self.prompt = nn.Parameter(torch.zeros(1, 3, input_size, input_size))
        self.register_buffer("mask", _border_mask(input_size, self.pad))

    def grad_masks(self) -> dict[str, Tensor]:
        return {"prompt": self.mask}

    def forward(self, x: Tensor) -> Tensor:
        x = resize_square(x, self.image_size)
        p = self.pad
        return F.pad(x, (p, p, p, p)) + self.prompt

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, inner_size={self.image_size}, pad={self.pad}"


class _AdditivePrompter(Prompter):
    """VP prompts are added on top of the full-size image. VP adds them to the *normalized* image; adding
    ``scale * P`` to the pixels before normalization with ``scale`` = the backbone's std is the same model and
    keeps VP's initialization and learning rate meaningful.
    """

    def __init__(self, input_size: int, scale: Sequence[float] | None) -> None:
        super().__init__()
        self.input_size = input_size
        self.image_size = input_size
        self.register_buffer("scale", _scale_buffer(scale, 3))


def _check_border(width: int, input_size: int) -> None:
    """A border of ``width`` pixels must leave a center inside an ``input_size`` canvas."""
    if not 0 < 2 * width < input_size:
        raise ValueError(f"--prompt-size {width} must be positive and less than half of --input-size {input_size}")


class PadPrompter(_AdditivePrompter):
    """VP padding: a learnable border of width ``pad`` (randn init), added on top of the image.

    Args:
        input_size: S.
        pad: border width p (VP: 30).
        scale: per-channel factor the prompt is multiplied by (the backbone's std; see class doc).
    """

    name = "pad"

    def __init__(self, input_size: int = 224, pad: int = 30, scale: Sequence[float] | None = None) -> None:
        super().__init__(input_size, scale)
        _check_border(pad, input_size)
        self.pad = pad
        self.register_buffer("mask", _border_mask(input_size, pad))
        # The center is not a parameter of VP's prompt: it starts at zero and, masked in forward, stays there.
        self.prompt = nn.Parameter(torch.randn(1, 3, input_size, input_size) * self.mask)

    def forward(self, x: Tensor) -> Tensor:
        return resize_square(x, self.input_size) + self.prompt * self.mask * self.scale

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, pad={self.pad}"


class FixedPatchPrompter(_AdditivePrompter):
    """VP fixed patch: a ``patch x patch`` prompt (randn init) added at the top-left corner."""

    name = "fixed_patch"

    def __init__(self, input_size: int = 224, patch: int = 30, scale: Sequence[float] | None = None) -> None:
        super().__init__(input_size, scale)
        if not 0 < patch <= input_size:
            raise ValueError(f"--prompt-size {patch} must be between 1 and --input-size {input_size}")
        self.patch = patch
        self.prompt = nn.Parameter(torch.randn(1, 3, patch, patch))

    def _place(self, top: int, left: int) -> Tensor:
        s, k = self.input_size, self.patch
        return F.pad(self.prompt * self.scale, (left, s - k - left, top, s - k - top))

    def forward(self, x: Tensor) -> Tensor:
        return resize_square(x, self.input_size) + self._place(0, 0)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, patch={self.patch}"


class RandomPatchPrompter(FixedPatchPrompter):
    """VP random patch: the patch lands at a random place for each training batch (top-left in evaluation,
    so evaluation is deterministic)."""

    name = "random_patch"

    def forward(self, x: Tensor) -> Tensor:
        x = resize_square(x, self.input_size)
        if not self.training:
            return x + self._place(0, 0)
        span = self.input_size - self.patch + 1
        top, left = (int(v) for v in torch.randint(span, (2,)))
        return x + self._place(top, left)


class IdentityPrompter(Prompter):
    """No prompt: resize to ``S x S`` only (zero-shot and label-mapping-only baselines)."""

    name = "none"

    def __init__(self, input_size: int = 224) -> None:
        super().__init__()
        self.input_size = input_size
        self.image_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        return resize_square(x, self.input_size)


_PROMPTERS: dict[str, type[Prompter]] = {
    cls.name: cls for cls in (EVPPrompter, PadPrompter, FixedPatchPrompter, RandomPatchPrompter, IdentityPrompter)
}


def list_prompters() -> list[str]:
    """Names accepted by :func:`create_prompter`."""
    return sorted(_PROMPTERS)


def _whole_size(key: str, value: Any) -> int:
    """``value`` as an int (224.0 is 224), or a ValueError naming ``key``: a size is a whole number of pixels."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{key} {value!r} must be a whole number of pixels")
    return int(value)


def create_prompter(
    name: str,
    input_size: int = 224,
    inner_size: int | None = None,
    prompt_size: int | None = None,
    scale: Sequence[float] | None = None,
) -> Prompter:
    """Build a prompter by name.

    Args:
        name: one of :func:`list_prompters`.
        input_size: S, the backbone input size.
        inner_size: s, EVP's shrunk image size (default: 164 at S = 224, same ratio elsewhere).
        prompt_size: p. For ``evp`` the border width (``s = S - 2p``; give s or p, or both consistently); for
            ``pad`` the border width (default 30); for the patch prompters the patch side (default 30).
        scale: per-channel prompt scale of the additive VP prompters, required for them: the backbone's std.

    Raises:
        ValueError: unknown name or inconsistent sizes, with a message naming the flag to fix.
    """
    if not isinstance(name, str) or name not in _PROMPTERS:
        hint = did_you_mean(name, _PROMPTERS) if isinstance(name, str) else ""
        raise ValueError(f"unknown prompter {name!r}{hint} (available: {', '.join(list_prompters())})")
    input_size = _whole_size("input_size", input_size)
    inner_size = None if inner_size is None else _whole_size("inner_size", inner_size)
    prompt_size = None if prompt_size is None else _whole_size("prompt_size", prompt_size)
    if name == "evp":
        if prompt_size is not None:
            _check_border(prompt_size, input_size)
            derived = input_size - 2 * prompt_size
            if inner_size is not None and inner_size != derived:
                raise ValueError(
                    f"--inner-size {inner_size} and --prompt-size {prompt_size} disagree at --input-size "
                    f"{input_size}: EVP needs inner = input - 2 * prompt ({derived}); give only one of them"
                )
            inner_size = derived
        return EVPPrompter(input_size, inner_size)
    if name == "none":
        return IdentityPrompter(input_size)
    if scale is None:
        raise ValueError(
            f"prompter {name!r} is VP's, added to the normalized image: pass scale=backbone.std.flatten().tolist() "
            "(the backbone's std, so that VP's initialization and learning rate mean what they do in VP), or "
            "scale=[1.0] for a prompt added in pixel units"
        )
    p = default_pad(input_size) if prompt_size is None else prompt_size
    return _PROMPTERS[name](input_size, p, scale)
