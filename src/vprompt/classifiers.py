"""Frozen pre-trained *classifiers* as backbones: timm, torchvision and the CIFAR-10 ResNets.

A :class:`ClassifierBackbone` outputs source-class logits (``kind == "classifier"``); a label-mapping head
(:mod:`vprompt.heads`) turns them into target-class logits, or a linear head learns on top of them. Its
:meth:`ClassifierBackbone.features` gives the penultimate features (the classifier layer's input), which the linear
probe reads.

Sources, each registered with :func:`vprompt.backbones.register_backbone_source` when this module is imported:

* ``timm:<name>`` (``timm:resnet50.tv_in1k``): ``--pretrained default`` downloads timm's weights, a file or folder
  loads local weights, ``none`` is random init. Mean/std, input size and whether the size is fixed come from the
  model's own ``pretrained_cfg`` (ImageNet statistics for ImageNet-trained CNNs; ``(0.5, 0.5, 0.5)`` for the
  augreg ViTs, which were trained that way).
* ``tv:<name>`` (``tv:resnet50``): ``--pretrained default`` or a weights enum name (``IMAGENET1K_V2``), a local
  state-dict file, or ``none``. Published weights are fetched into torch's hub cache and read like a local file,
  with ``weights_only=True``. Mean/std and crop size from the weights' transforms (ImageNet's without weights).
* ``cifar:resnet20|32|44|56``: the CIFAR-10 ResNets of :mod:`vprompt.cifar_resnet`. ``--pretrained PATH`` (the
  checkpoint file or a folder holding it) or ``cifar10`` (cache, downloading from the public URL); the sha256 is
  verified before ``torch.load(weights_only=True)`` (a file of a name of its own is the user's own weights).
  ImageNet mean/std (what the checkpoints were trained with); any input size works (global average pool), 32 by
  default.

A local weights file whose classifier layer has another number of classes (fine-tuned weights) gets a layer of its
size.
"""

from __future__ import annotations

import logging
import math
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenBackbone,
    _is_default,
    _is_none,
    check_model,
    listed_names,
    local_weights,
    register_backbone_source,
)
from .checkpoint import torch_load_failure
from .download import WEIGHTS_SUFFIXES, error_line, fetching_weights
from .errors import did_you_mean, state_dict_mismatch

__all__ = ["ClassifierBackbone", "load_state_dict_file", "TIMM_EXAMPLES"]

_log = logging.getLogger(__name__)

FeatureFn = Callable[[nn.Module, Tensor], Tensor]

#: Names shown by ``vprompt list models`` for timm (any ``timm.list_models(pretrained=True)`` name works).
TIMM_EXAMPLES = (
    "resnet50.tv_in1k",
    "resnext101_32x8d.fb_wsl_ig1b_ft_in1k",
    "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "resnet50.a1_in1k",
    "convnext_tiny.fb_in1k",
)

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class ClassifierBackbone(FrozenBackbone):
    """A frozen classifier: :meth:`encode` gives source-class logits, :meth:`features` penultimate features.

    Args:
        model: the classifier; frozen here (eval mode, no gradients, BatchNorm statistics fixed).
        mean: per-channel mean of its normalization.
        std: per-channel std of its normalization.
        input_size: the size it was trained at (the default canvas size S).
        fixed_input_size: whether it only accepts ``input_size`` (a ViT) or any size (a CNN).
        name: the model name as the user typed it (``cifar:resnet20``).
        num_source_classes: number of logits it outputs.
        feature_fn: ``(model, normalized input) -> (B, D)`` penultimate features.
        source_classnames: names of the source classes when known (CIFAR-10, ImageNet-1k).
        classifier: the layer (or layers) that gives the logits, which then runs in fp32 under autocast (as the CLIP
            head does): bf16 logits of about 10 are rounded to steps of 1/16, so two classes tie in a few images in
            a thousand and the argmax takes the lower index.
    """

    kind = "classifier"

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        fixed_input_size: bool,
        name: str,
        num_source_classes: int,
        feature_fn: FeatureFn,
        source_classnames: Sequence[str] | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__(model, mean, std, input_size, fixed_input_size=fixed_input_size, name=name)
        for layer in classifier if isinstance(classifier, (tuple, list)) else [classifier]:  # (a distilled ViT: 2)
            if isinstance(layer, nn.Module):
                layer.register_forward_hook(_in_fp32)
        self.num_source_classes = int(num_source_classes)
        self.output_dim = self.num_source_classes
        self._feature_fn = feature_fn
        names = list(source_classnames) if source_classnames is not None else None
        self.source_classnames = names if names is not None and len(names) == self.num_source_classes else None

    def encode(self, x: Tensor) -> Tensor:
        """Normalized input -> source-class logits ``(B, num_source_classes)``."""
        return self.model(x)

    def encode_features(self, x: Tensor) -> Tensor:
        """Normalized input -> penultimate features ``(B, D)``."""
        return self._feature_fn(self.model, x)

    def features(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] -> penultimate features (the classifier layer's input), for linear probes."""
        return self.encode_features(self.normalize(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_source_classes={self.num_source_classes}"


# --------------------------------------------------------------------------------------------------------------
# Shared helpers


def _in_fp32(layer: nn.Module, args: tuple[Any, ...], out: Any) -> Tensor | None:
    """Forward hook: the layer's output recomputed in fp32 where autocast gave a lower precision (the layer: a
    classifier's final ``Linear``, or SqueezeNet's 1x1 convolution and pooling)."""
    if not isinstance(out, Tensor) or out.dtype == torch.float32:
        return None
    with torch.autocast(out.device.type, enabled=False):  # (forward: not its hooks, which saw the call already)
        return layer.forward(*(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args))


def _warn_random(name: str) -> None:
    _log.warning("model %s: RANDOM weights (no --pretrained, or none); pass --pretrained default or a file", name)


def _weights_file(path: Path, flag_name: str) -> Path:
    """A weights file from a file or a folder (a Hugging Face snapshot folder holds ``model.safetensors``)."""
    if path.is_file():
        return path
    if path.is_dir():
        for f in _WEIGHT_FILES:
            if (path / f).is_file():
                return path / f
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in WEIGHTS_SUFFIXES)
        if len(found) == 1:
            return path / found[0]
        raise FileNotFoundError(
            f"--pretrained {path}: folder has no {' or '.join(_WEIGHT_FILES[:2])}"
            + (f" and several candidates ({', '.join(found)}); pass the file itself" if found else "")
        )
    raise FileNotFoundError(
        f"--pretrained {path}: no such file or folder; {flag_name} models take default, none, or a weights file"
        + (" (a timm pretrained tag goes in the name: --model timm:<arch>.<tag>)" if flag_name == "timm" else "")
    )


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict safely: safetensors, or ``torch.load(weights_only=True)`` (no pickled code runs).

    Accepts a bare name->tensor mapping or one nested under ``state_dict`` / ``model``; strips a DataParallel
    ``module.`` prefix.

    Raises:
        ValueError: the file does not hold a state dict.
    """
    path = Path(path)
    safetensors = path.suffix == ".safetensors"
    try:
        if safetensors:
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # cut short, unpickling refused, or not such a file: say which file and why
        kind = "a safetensors file" if safetensors else "a PyTorch checkpoint that torch.load(weights_only=True) reads"
        why = error_line(e) if safetensors else torch_load_failure(e)
        raise ValueError(f"--pretrained {path}: not {kind} ({why})") from e
    for key in _STATE_DICT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"--pretrained {path}: does not hold a state dict (a mapping of parameter names to tensors)")
    state = OrderedDict((k.removeprefix("module."), v) for k, v in obj.items())
    metadata = getattr(obj, "_metadata", None)  # (the modules' versions, which some read: torchvision's MNASNet)
    if isinstance(metadata, dict):
        state._metadata = OrderedDict((k.removeprefix("module."), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return state


def _classes_in(state: dict[str, Tensor], layer: str) -> int | None:
    """How many classes the weights ``state`` give the classifier layer at path ``layer`` (None: not there)."""
    weight = state.get(f"{layer}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim in (2, 4) else None


def _load_weights(model: nn.Module, path: Path, name: str, state: dict[str, Tensor] | None = None) -> None:
    """Load the weights file ``path`` (``state``: its contents, when already read) into ``model``, strictly."""
    state = load_state_dict_file(path) if state is None else state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"--pretrained {path} does not match model {name}: {state_dict_mismatch(e)}") from e
    _log.info("model %s: loaded weights from %s", name, path)


def _input_of(path: str) -> FeatureFn:
    """Features = what the module at ``path`` (the final classifier layer) receives, captured with a hook."""

    def features(model: nn.Module, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        layer = model.get_submodule(path)
        handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            model(x)
        finally:
            handle.remove()
        inputs = captured[-1]  # (B, D), or (B, D, H, W) in front of a 1x1-convolution classifier: average-pooled
        return inputs.mean(dim=tuple(range(2, inputs.ndim))) if inputs.ndim > 2 else inputs

    return features


def _imagenet_classnames(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


# --------------------------------------------------------------------------------------------------------------
# timm


def _list_timm() -> list[str]:
    return list(TIMM_EXAMPLES)


def _timm_features(model: nn.Module, x: Tensor) -> Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)


def _check_timm_name(name: str) -> None:
    import timm

    arch, _, tag = name.partition(".")
    if name.startswith("hf-hub:"):  # a model of the Hugging Face Hub: its config is known once fetched
        return
    if timm.is_model(arch) and (not tag or name in timm.list_pretrained(f"{arch}.*")):
        return
    known = timm.list_pretrained() if tag else timm.list_models()
    hint = did_you_mean(name, known, prefix="timm:")
    raise ValueError(f"unknown --model 'timm:{name}'{hint} (any timm.list_models(pretrained=True) name works)")


def _create_timm(
    name: str, pretrained: str | Path | None = None, cache_dir: str | None = None, **_: Any
) -> ClassifierBackbone:
    import timm

    check_model(f"timm:{name}")
    download = _is_default(pretrained)
    local = None if _is_none(pretrained) or download else _weights_file(Path(str(pretrained)).expanduser(), "timm")
    if _is_none(pretrained):
        _warn_random(f"timm:{name}")
    kwargs: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
    hub = name.startswith("hf-hub:")  # (its config is fetched, with or without its weights)
    if not hub:
        fetching = fetching_weights(f"--model timm:{name} --pretrained {pretrained}", hub=True)
    else:  # a local copy of the weights does not spare the config: the architecture's own name does
        repo = name[len("hf-hub:") :]
        arch = repo.split("/", 1)[1] if repo.startswith("timm/") else "<architecture in its config.json>"
        fetching = fetching_weights(
            f"--model timm:{name}",
            f"name the architecture instead, --model timm:{arch}, with --pretrained PATH pointing to a local copy of "
            "the weights",
            hub=True,
            thing="config and weights" if download else "config",
        )
    with fetching if download or hub else nullcontext():
        model = timm.create_model(name, pretrained=download, **kwargs)
    if local is not None:
        state = load_state_dict_file(local)
        layer = model.pretrained_cfg.get("classifier")
        classes = _classes_in(state, layer) if isinstance(layer, str) else None
        if classes is not None and classes != model.num_classes:  # weights fine-tuned to other classes
            model.reset_classifier(classes)
        _load_weights(model, local, f"timm:{name}", state)
    if not getattr(model, "num_classes", 0):
        raise ValueError(f"model timm:{name} has no classifier (num_classes 0); it cannot give source logits")
    cfg = model.pretrained_cfg
    size, fixed = _timm_size_of(cfg)
    return ClassifierBackbone(
        model,
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        input_size=size,
        fixed_input_size=fixed,
        name=f"timm:{name}",
        num_source_classes=model.num_classes,
        feature_fn=_timm_features,
        source_classnames=_imagenet_classnames(model.num_classes),
        classifier=model.get_classifier(),
    )


def _timm_size_of(cfg: Any) -> tuple[int, bool]:
    """(input size, fixed) from a timm pretrained config (a dict, or timm's PretrainedCfg)."""
    cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return int(cfg.get("input_size", (3, 224, 224))[-1]), bool(cfg.get("fixed_input_size", False))


def _timm_size(name: str, pretrained: Any = None) -> tuple[int, bool] | None:
    from timm.models import get_pretrained_cfg

    if name.startswith("hf-hub:"):  # known once its config is fetched, when it is built
        return None
    try:
        cfg = get_pretrained_cfg(name)  # what timm.create_model(name) sets as the model's pretrained_cfg
    except RuntimeError:  # an unknown tag: the factory tells
        return None
    return _timm_size_of(cfg) if cfg is not None else None


# --------------------------------------------------------------------------------------------------------------
# torchvision


def _list_tv() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))  # classification models only (no detection, segmentation, video)


def _classifier_layer(model: nn.Module) -> tuple[str, int]:
    """The final classifier layer's path and number of classes: the last ``nn.Linear``, or for the models without
    one (SqueezeNet) the last 1x1 convolution."""
    modules = list(model.named_modules())
    linears = [(n, m.out_features) for n, m in modules if isinstance(m, nn.Linear)]
    convs = [(n, m.out_channels) for n, m in modules if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if not linears and not convs:
        raise ValueError("this torchvision model has no final Linear layer or 1x1 convolution to read classes from")
    return (linears or convs)[-1]  # the classifier is defined last in every torchvision classification model


def _default_tv_weights(name: str) -> Any:
    """torchvision's default weights of ``name`` (their description, nothing is downloaded), or None."""
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(name).DEFAULT
    except (KeyError, ValueError, AttributeError):
        return None


def _tv_fixed(name: str) -> bool:
    """Whether torchvision model ``name`` takes only its own input size (its ViTs and MaxViT)."""
    return name.startswith(("vit_", "maxvit_"))


def _tv_size(name: str, pretrained: Any = None) -> tuple[int, bool] | None:
    """The size of torchvision weights given by name (the default ones included); None for random weights or a
    weights file, whose size the built model tells (a ViT's from its position embeddings)."""
    import torchvision.models as tvm

    if _is_none(pretrained) or local_weights(f"tv:{name}", pretrained) is not None:
        return None
    try:
        weights = tvm.get_model_weights(name).verify("DEFAULT" if _is_default(pretrained) else str(pretrained))
    except (KeyError, ValueError, TypeError):  # an unknown weights name: the factory tells
        return None
    return int(weights.transforms().crop_size[0]), _tv_fixed(name)


def _tv_published_file(url: str, what: str) -> Path:
    """torchvision's published weights at ``url``, in torch's hub cache (where torchvision keeps them), downloaded
    when missing with the sha256 prefix in the file's name checked, as torchvision does. The caller reads the file
    with ``weights_only=True``: torchvision's own loader unpickles it without that guard."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        prefix = re.search(r"-([a-f0-9]+)\.", cached.name)
        with fetching_weights(what):  # (a temporary file beside it, moved into place once the digest matches)
            torch.hub.download_url_to_file(url, str(cached), prefix.group(1) if prefix else None)
    return cached


#: A DenseNet layer's old parameter names, as torchvision's published files still have them: ``norm.1.weight``
#: for ``norm1.weight`` (a module name may no longer hold a dot).
_OLD_DENSENET_KEY = re.compile(
    r"^(.*\.denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)


def _tv_state(name: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision model's weights as its module takes them, as torchvision's builder reads its published files:
    a DenseNet's old parameter names renamed; an MNASNet's without the module versions it reads (a safetensors
    file) taken as saved by this torchvision (version 2)."""
    if name.startswith("densenet"):
        renamed = OrderedDict()
        for key, value in state.items():
            old = _OLD_DENSENET_KEY.match(key)
            renamed[old.group(1) + old.group(2) if old else key] = value
        renamed._metadata = getattr(state, "_metadata", OrderedDict())  # type: ignore[attr-defined]
        return renamed
    if name.startswith("mnasnet") and "" not in getattr(state, "_metadata", {}):
        state = OrderedDict(state)
        state._metadata = OrderedDict({"": {"version": 2}})  # type: ignore[attr-defined]
    return state


def _create_tv(name: str, pretrained: str | Path | None = None, **_: Any) -> ClassifierBackbone:
    import torchvision.models as tvm

    check_model(f"tv:{name}")
    weights, local = None, None
    if _is_none(pretrained):
        _warn_random(f"tv:{name}")
    elif (where := local_weights(f"tv:{name}", pretrained)) is not None:
        local = _weights_file(where, "torchvision")
    else:
        enum = tvm.get_model_weights(name)
        tag = "DEFAULT" if _is_default(pretrained) else str(pretrained)
        try:
            weights = enum.verify(tag)
        except (KeyError, ValueError, TypeError):
            tags = ", ".join(["DEFAULT", *(k for k in enum.__members__ if k != "DEFAULT")])
            raise ValueError(
                f"--pretrained {pretrained!r} is neither a file nor a weights name of tv:{name} (weights: {tags}, none)"
            ) from None
        local = _tv_published_file(weights.url, f"--model tv:{name} --pretrained {pretrained}")
    try:
        state = _tv_state(name, load_state_dict_file(local)) if local is not None else None
    except ValueError as e:
        if weights is None:
            raise
        raise ValueError(f"{e}; it is torchvision's {weights} in torch's cache: delete it to download it again") from e
    options = {}
    if state is not None and name in ("googlenet", "inception_v3"):
        options["init_weights"] = False  # weights about to be loaded make the slow truncated-normal init a waste
        aux = "aux1." if name == "googlenet" else "AuxLogits."
        if not any(k.startswith(aux) for k in state):  # saved from torchvision's pretrained model, which drops them
            options["aux_logits"] = False
    if state is not None and "encoder.pos_embedding" in state and name.startswith("vit_"):
        # A ViT is built for one size, which its weights tell: 384 px for vit_b_16's IMAGENET1K_SWAG_E2E_V1.
        patch = int(name.rsplit("_", 1)[1])
        options["image_size"] = math.isqrt(state["encoder.pos_embedding"].shape[1] - 1) * patch
    model = tvm.get_model(name, **options)
    if local is not None and state is not None:
        layer, built = _classifier_layer(model)
        classes = _classes_in(state, layer)
        if classes is not None and classes != built:  # weights fine-tuned to other classes: a layer their size
            old = model.get_submodule(layer)
            new = (
                nn.Linear(old.in_features, classes)
                if isinstance(old, nn.Linear)
                else nn.Conv2d(old.in_channels, classes, kernel_size=1)
            )
            model.set_submodule(layer, new)
        _load_weights(model, local, f"tv:{name}", state)
        if hasattr(model, "transform_input"):  # GoogLeNet, Inception v3: as torchvision's builder sets with weights,
            model.transform_input = True  # their published weights expect (0.5, 0.5, 0.5) statistics, made from ours
            model.aux_logits = False  # and their auxiliary heads, loaded with them, are dropped: only training used
            for aux in ("aux1", "aux2", "AuxLogits"):  # them (half of GoogLeNet's parameters)
                if hasattr(model, aux):
                    setattr(model, aux, None)
    path, num_classes = _classifier_layer(model)
    fixed = _tv_fixed(name)
    # A weights file or random weights take their statistics and size from the default weights' transforms
    # (metadata only, nothing is downloaded): EfficientNet-B3 is a 300-pixel model whichever way it was loaded.
    described = weights if weights is not None else _default_tv_weights(name)
    if described is not None and len(described.meta.get("categories") or ()) == num_classes:
        tf = described.transforms()
        # A ViT is built for one size: vit_h_14 without weights takes 224, though its default weights take 518.
        mean, std, size = tf.mean, tf.std, int(getattr(model, "image_size", None) or tf.crop_size[0])
        classnames = described.meta.get("categories")
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        size = int(getattr(model, "image_size", 224))
        classnames = _imagenet_classnames(num_classes)
    return ClassifierBackbone(
        model,
        mean=mean,
        std=std,
        input_size=size,
        fixed_input_size=fixed,
        name=f"tv:{name}",
        num_source_classes=num_classes,
        feature_fn=_input_of(path),
        source_classnames=classnames,
        classifier=model.get_submodule(path),
    )


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10 ResNets


def _list_cifar() -> list[str]:
    from .cifar_resnet import CIFAR_RESNET_DEPTHS

    return [f"resnet{d}" for d in CIFAR_RESNET_DEPTHS]


def _cifar_features(model: nn.Module, x: Tensor) -> Tensor:
    return model.forward_features(x)


def _cifar_size(name: str, pretrained: Any = None) -> tuple[int, bool]:
    return 32, False  # CIFAR's images; any size fits (global average pooling)


def _create_cifar(
    name: str,
    pretrained: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
    **_: Any,
) -> ClassifierBackbone:
    from .cifar_resnet import CIFAR10_CLASSES, CIFAR10_MEAN_STD, create_cifar_resnet

    check_model(f"cifar:{name}")
    depth = int(name.removeprefix("resnet"))
    if _is_none(pretrained):
        _warn_random(f"cifar:{name}")
        pretrained = None
    elif _is_default(pretrained):
        pretrained = "cifar10"
    model = create_cifar_resnet(depth, pretrained=pretrained, cache_dir=cache_dir, download=download)
    mean, std = CIFAR10_MEAN_STD
    size, fixed = _cifar_size(name)
    return ClassifierBackbone(
        model,
        mean=mean,
        std=std,
        input_size=size,
        fixed_input_size=fixed,
        name=f"cifar:{name}",
        num_source_classes=model.num_classes,
        feature_fn=_cifar_features,
        source_classnames=CIFAR10_CLASSES,
        classifier=model.linear,
    )


register_backbone_source(
    "timm",
    _create_timm,
    _list_timm,
    "timm classifiers: any timm name, of which a few follow (--pretrained default | FILE | none)",
    _check_timm_name,
    sizer=_timm_size,
)
register_backbone_source(
    "tv",
    _create_tv,
    _list_tv,
    "torchvision classifiers (--pretrained default | IMAGENET1K_V1 | FILE | none)",
    listed_names(_list_tv, "tv:"),
    sizer=_tv_size,
)
register_backbone_source(
    "cifar",
    _create_cifar,
    _list_cifar,
    "CIFAR-10 ResNets (--pretrained FILE | FOLDER | cifar10 | none)",
    listed_names(_list_cifar, "cifar:"),
    sizer=_cifar_size,
)
