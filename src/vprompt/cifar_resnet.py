"""CIFAR-10 ResNets (depth 20/32/44/56) compatible with the akamaster/pytorch_resnet_cifar10 checkpoints.

The architecture is the 6n+2 CIFAR ResNet of He et al. (2016) with the parameter-free "option A" shortcut. Parameter and
buffer names match the published checkpoints once their ``module.`` (DataParallel) prefix is stripped, so the weights
load with ``strict=True``.

Inputs are RGB images in [0, 1] normalized with the *ImageNet* mean/std (:data:`CIFAR10_MEAN_STD`); the checkpoints
were trained that way. Because the head is a global average pool, any input size works, which lets visual-prompting
methods feed the model canvases larger than 32x32.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .download import WEIGHTS_SUFFIXES, DigestMismatch, download_verified, fetching_weights, file_digest
from .errors import state_dict_mismatch

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN_STD",
    "CIFAR_RESNET_CHECKPOINTS",
    "CIFAR_RESNET_DEPTHS",
    "CIFAR_RESNET_URL",
    "BasicBlock",
    "CifarResNet",
    "create_cifar_resnet",
    "default_cache_dir",
    "load_cifar_resnet_state_dict",
    "resolve_cifar_resnet_checkpoint",
]

#: depth -> (checkpoint file name, full sha256 of that file).
CIFAR_RESNET_CHECKPOINTS: dict[int, tuple[str, str]] = {
    20: ("resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    32: ("resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    44: ("resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    56: ("resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
}
CIFAR_RESNET_DEPTHS: tuple[int, ...] = tuple(sorted(CIFAR_RESNET_CHECKPOINTS))

#: Raw GitHub URL pattern of the checkpoints; format with ``file=<checkpoint file name>``.
CIFAR_RESNET_URL = "https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/d5489e8/pretrained_models/{file}"

#: The checkpoints expect ImageNet statistics, not CIFAR-10 ones (accuracy drops to ~28 % with the wrong ones).
CIFAR10_MEAN_STD: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_log = logging.getLogger("vprompt")

_PRETRAINED_ALIASES = ("cifar10", "default")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class _PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample spatially and zero-pad the channel dimension."""

    def __init__(self, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ::2 yields ceil(H/2), the same size as the stride-2, padding-1 3x3 conv on the main path, for odd H too.
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad_channels, self.pad_channels))

    def extra_repr(self) -> str:
        return f"pad_channels={self.pad_channels}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            # The checkpoints only ever double the channels (16->32->64), which is what planes//4 per side assumes.
            if planes != 2 * in_planes:
                raise ValueError(f"option-A shortcut needs planes == 2 * in_planes, got {in_planes} -> {planes}")
            self.shortcut = _PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with stages of 16/32/64 channels and a 64->``num_classes`` linear head.

    Attributes:
        depth: Network depth (20, 32, 44, 56, ...).
        num_features: Size of the pooled penultimate feature vector (64).
        num_classes: Number of output logits.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.num_features = 64
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self._in_planes = 16
        self.layer1 = self._make_stage(16, n, stride=1)
        self.layer2 = self._make_stage(32, n, stride=2)
        self.layer3 = self._make_stage(64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self._in_planes, planes, stride if i == 0 else 1))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the pooled penultimate features.

        Args:
            x: Normalized images of shape (B, 3, H, W); any H, W >= 1 works, 32x32 is the training size.

        Returns:
            Tensor of shape (B, 64).
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Maps (B, 64) pooled features to (B, num_classes) logits."""
        return self.linear(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits of shape (B, num_classes) for normalized images (B, 3, H, W)."""
        return self.forward_head(self.forward_features(x))


def _check_depth(depth: int) -> tuple[str, str]:
    if depth not in CIFAR_RESNET_CHECKPOINTS:
        valid = ", ".join(str(d) for d in CIFAR_RESNET_DEPTHS)
        raise ValueError(f"unknown CIFAR ResNet depth {depth!r}; valid depths are {valid}")
    return CIFAR_RESNET_CHECKPOINTS[depth]


def default_cache_dir() -> Path:
    """Returns the checkpoint cache: ``$VPROMPT_CACHE/cifar10_resnets``, else ``~/.cache/vprompt/cifar10_resnets``."""
    root = os.environ.get("VPROMPT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vprompt"
    return base / "cifar10_resnets"


def _verify_sha256(path: Path, expected: str, cached: bool = False) -> None:
    """Refuse ``path`` unless its sha256 is ``expected``, naming a good checkpoint of another depth; ``cached``: a
    copy in the cache (a corrupt one is downloaded again once deleted), not a file the user gave. A file the user
    gave under a name of its own (not a published checkpoint's) is the user's own weights: it passes, and is then
    read with ``weights_only=True`` like any other."""
    got = file_digest(path, "sha256")
    if got == expected:
        return
    wanted, name = next((d, name) for d, (name, sha) in CIFAR_RESNET_CHECKPOINTS.items() if sha == expected)
    other = next((d for d, (_, sha) in CIFAR_RESNET_CHECKPOINTS.items() if sha == got), None)
    if other is not None:
        raise ValueError(
            f"{path} is the ResNet-{other} checkpoint, not the ResNet-{wanted} one the model needs: give the "
            f"ResNet-{wanted} weights as --pretrained, or train with --model cifar:resnet{other}"
        )
    if not cached and path.name not in {n for n, _ in CIFAR_RESNET_CHECKPOINTS.values()}:
        _log.info("%s is not a published CIFAR-10 ResNet checkpoint: loaded as the user's own weights", path)
        return
    fix = (
        "the cached copy is corrupt: delete it and it is downloaded again, or point --pretrained at a good copy"
        if cached
        else f"it is a corrupt copy of the ResNet-{wanted} checkpoint ({name}) or another file: point --pretrained "
        "at that checkpoint or a folder holding it"
    )
    raise ValueError(f"sha256 mismatch for {path}: expected {expected}, got {got}; {fix}")


def _download(url: str, dest: Path, expected_sha256: str) -> None:
    """Downloads ``url`` to ``dest``, kept only if its sha256 is the published one (see :mod:`vprompt.download`)."""
    try:
        with fetching_weights(f"{url} (to {dest})"):
            download_verified(url, dest, expected_sha256, "sha256")
    except DigestMismatch as exc:
        raise ValueError(
            f"sha256 mismatch for download of {exc}; the download is corrupt or not this checkpoint (nothing was "
            "saved; retry, or pass --pretrained PATH to a local copy)"
        ) from exc


def _checkpoint_candidates(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHTS_SUFFIXES)


def resolve_cifar_resnet_checkpoint(
    depth: int,
    pretrained: str | Path,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> Path:
    """Finds (and if needed downloads) the checkpoint file for ``depth`` and verifies its sha256.

    Args:
        depth: One of :data:`CIFAR_RESNET_DEPTHS`.
        pretrained: Path to a checkpoint file, a folder holding the standard file name, or ``"cifar10"``/``"default"``
            for the cache folder (downloading into it if the file is absent and ``download`` is true); the aliases
            always mean the cache, so a folder of that name is given as ``./cifar10``.
        cache_dir: Cache folder for ``"cifar10"``/``"default"``; defaults to :func:`default_cache_dir`.
        download: Whether a missing cached checkpoint may be downloaded from :data:`CIFAR_RESNET_URL`.

    Returns:
        Path of a file whose sha256 equals the published one, or of the user's own weights (a file given under a
        name of its own, see :func:`_verify_sha256`).

    Raises:
        ValueError: Unknown depth, or sha256 mismatch.
        FileNotFoundError: The file or folder does not exist, the folder lacks the file, or the download failed.
    """
    file_name, expected = _check_depth(depth)
    path = Path(pretrained).expanduser()
    cached = isinstance(pretrained, str) and pretrained.lower() in _PRETRAINED_ALIASES
    if cached:  # (a folder of that name: ./cifar10)
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / file_name
        if not path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"{path} not found and download=False; download {CIFAR_RESNET_URL.format(file=file_name)} there, "
                    "or pass --pretrained PATH pointing to a local copy"
                )
            blocker = next(p for p in (folder, *folder.parents) if p.exists())  # ("/" at the latest)
            if not blocker.is_dir():
                given = "cache_dir" if cache_dir is not None else "$VPROMPT_CACHE"
                raise FileExistsError(
                    f"{blocker} is a file, so the weights cannot be downloaded into {folder}: set {given} to a folder"
                )
            _download(CIFAR_RESNET_URL.format(file=file_name), path, expected)
    elif path.is_dir():
        folder = path
        path = folder / file_name
        if not path.is_file():
            found = _checkpoint_candidates(folder)
            have = f"it has: {', '.join(found)}" if found else "it has no checkpoint-like files at all"
            raise FileNotFoundError(
                f"folder {folder} has no {file_name} (the ResNet-{depth} checkpoint); {have}. "
                f"Pass the file itself or a folder that contains {file_name}"
            )
    elif not path.exists():
        raise FileNotFoundError(
            f"--pretrained {str(pretrained)!r} is neither a file or folder nor a weights name of cifar:resnet{depth} "
            f"(weights: {', '.join(_PRETRAINED_ALIASES)}, none): pass the .th file, a folder holding {file_name}, or "
            f"{_PRETRAINED_ALIASES[0]} for the cached copy (downloaded where absent)"
        )
    _verify_sha256(path, expected, cached=cached)
    return path


def load_cifar_resnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Loads a checkpoint file safely (``weights_only=True``, or safetensors) onto the CPU, as
    :func:`vprompt.classifiers.load_state_dict_file` reads any weights file: a ``.th`` file holding
    ``{"state_dict": ..., "best_prec1": ...}`` or a bare state dict, its ``module.`` prefix stripped; a file it cannot
    read is one ValueError naming it.

    The caller is responsible for verifying the file first (see :func:`resolve_cifar_resnet_checkpoint`).

    Returns:
        The state dict with plain parameter names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...).
    """
    from .classifiers import load_state_dict_file

    return load_state_dict_file(path)


def _fill_num_batches_tracked(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The checkpoints predate BatchNorm's num_batches_tracked buffer. It is unused in eval mode and with the default
    # momentum, so filling it explicitly (rather than relying on torch's version metadata) keeps strict loading honest
    # about every other key.
    filled = dict(state_dict)
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked") and name not in filled:
            filled[name] = torch.zeros_like(buf)
    return filled


def create_cifar_resnet(
    depth: int,
    pretrained: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> nn.Module:
    """Builds a CIFAR-10 ResNet, optionally with the published pretrained weights.

    Args:
        depth: 20, 32, 44 or 56.
        pretrained: ``None`` for Kaiming random init; a path to a ``.th`` checkpoint; a folder containing the standard
            file name (e.g. ``resnet20-12fca82f.th``); or ``"cifar10"``/``"default"`` to use the copy in ``cache_dir``,
            downloading it from :data:`CIFAR_RESNET_URL` when absent and ``download`` is true. The file's sha256 is
            checked against :data:`CIFAR_RESNET_CHECKPOINTS` before it is read; a file of a name of its own that
            matches none is the user's own weights (its classes as many as its ``linear`` layer has).
        cache_dir: Cache folder; defaults to ``$VPROMPT_CACHE/cifar10_resnets`` or ``~/.cache/vprompt/cifar10_resnets``.
        download: Allow downloading into the cache.

    Returns:
        A :class:`CifarResNet` (in train mode, like any fresh module; call ``.eval()`` for inference). It expects RGB in
        [0, 1] normalized with :data:`CIFAR10_MEAN_STD`.

    Raises:
        ValueError: Unknown depth, sha256 mismatch, or a checkpoint whose keys do not match.
        FileNotFoundError: Missing file/folder/file-in-folder, or a failed download.
    """
    _check_depth(depth)
    if pretrained is None:
        return CifarResNet(depth)
    path = resolve_cifar_resnet_checkpoint(depth, pretrained, cache_dir=cache_dir, download=download)
    loaded = load_cifar_resnet_state_dict(path)
    head = loaded.get("linear.weight")  # (the user's own weights may classify other classes: CIFAR-100's)
    model = CifarResNet(depth, num_classes=head.shape[0] if head is not None and head.ndim == 2 else 10)
    state_dict = _fill_num_batches_tracked(model, loaded)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match the ResNet-{depth} architecture: {state_dict_mismatch(exc)}") from exc
    return model
