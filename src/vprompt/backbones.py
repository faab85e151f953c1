"""Frozen backbones: the pre-trained model the prompt adapts, wrapped so that it can never change.

:class:`FrozenBackbone` takes pixels in [0, 1] (the prompter's output), applies the backbone's *own* mean/std,
and runs the model. Every parameter has ``requires_grad=False`` and the model stays in eval mode even when
``.train()`` is called on an enclosing module, so BatchNorm statistics and dropout never move.

Sources (the field's naming, as in open_clip and timm):
    * bare names are open_clip models: ``ViT-B-32`` with ``pretrained="openai"``, a local checkpoint path, or
      ``None`` for random init;
    * other sources register a prefix with :func:`register_backbone_source` (``timm:``, ``tv:``, ``cifar:``; the
      classifier sources live in :mod:`vprompt.classifiers`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import torch_load_failure
from .download import fetching_weights
from .errors import did_you_mean, state_dict_mismatch

__all__ = [
    "FrozenBackbone",
    "OpenCLIPBackbone",
    "create_backbone",
    "list_models",
    "model_kind",
    "register_backbone_source",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

_log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenBackbone(nn.Module):
    """A frozen pre-trained model behind its own normalization.

    Subclasses implement :meth:`encode` (normalized pixels -> output). ``kind`` says what the output is:
    ``"clip"`` (image embeddings, paired with a text head) or ``"classifier"`` (source-class logits).

    Args:
        model: the pre-trained module; frozen here.
        mean: per-channel mean of the backbone's normalization.
        std: per-channel std of the backbone's normalization.
        input_size: the input size S the model was trained at.
        fixed_input_size: whether the model only accepts ``input_size`` (a ViT) or any size (a CNN).
        name: the model name, for logs and checkpoints.
    """

    kind: str = "base"

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        fixed_input_size: bool = True,
        name: str = "",
    ) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = int(input_size)
        self.fixed_input_size = fixed_input_size
        self.name = name

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Keep the wrapped model in eval mode whatever ``mode`` is (BatchNorm and dropout stay frozen)."""
        super().train(mode)
        self.model.eval()
        return self

    def normalize(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] -> the backbone's normalized input."""
        return (x - self.mean) / self.std

    def encode(self, x: Tensor) -> Tensor:
        """Normalized input -> model output. Implemented by subclasses."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(self.normalize(x))

    def features(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] -> the representation a linear probe reads: the output itself; CLIP and classifiers
        override it."""
        return self.forward(x)

    def check_input_size(self, size: int) -> None:
        """Raise a clear error when ``size`` cannot be fed to this model: a size other than its own is tried on one
        blank image, since a CNN's pooling or kernels fail on an input they shrink to nothing (AlexNet at 16 px)."""
        check_input_size(self.name, size, self.input_size, self.fixed_input_size)
        if size == self.input_size:
            return
        try:
            with torch.no_grad():
                self(torch.zeros(1, 3, size, size, device=self.mean.device))
        except RuntimeError as e:
            raise ValueError(
                f"input size {size} (--input-size, or input_size in a config file) does not fit model {self.name!r}, "
                f"whose forward pass fails on it ({str(e).splitlines()[0]}); give a larger size, such as its "
                f"own {self.input_size}"
            ) from None

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, input_size={self.input_size}"


class OpenCLIPBackbone(FrozenBackbone):
    """An open_clip CLIP model: :meth:`encode` gives image embeddings, :meth:`encode_text` text embeddings."""

    kind = "clip"

    def __init__(self, model: nn.Module, tokenizer: Callable[..., Tensor], name: str) -> None:
        visual = model.visual
        size = visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_CLIP_STD
        super().__init__(model, mean, std, int(size), fixed_input_size=True, name=name)
        self.tokenizer = tokenizer

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, exponentiated (100 for the released models)."""
        return float(self.model.logit_scale.exp())

    def encode(self, x: Tensor) -> Tensor:
        return self.model.encode_image(x)

    def features(self, x: Tensor) -> Tensor:
        """What the CLIP paper's linear probes read: for a ViT the pooled features before the projection to the
        embedding space (its appendix A.3), otherwise the image embedding."""
        visual = self.model.visual
        proj = getattr(visual, "proj", None)
        if not isinstance(proj, torch.Tensor):
            return self.forward(x)
        visual.proj = None  # open_clip's vision transformer applies it only when set
        try:
            out = visual(self.normalize(x))
        finally:
            visual.proj = proj
        return out[0] if isinstance(out, tuple) else out  # (pooled, tokens) where it outputs tokens (CoCa)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Embed a list of strings with the text tower (no gradients)."""
        device = self.mean.device
        return self.model.encode_text(self.tokenizer(list(texts)).to(device))


# --------------------------------------------------------------------------------------------------------------
# Registry


def check_input_size(name: str, size: int, input_size: int, fixed: bool) -> None:
    """Raise a clear error when ``size`` cannot be fed to model ``name``, which takes ``input_size``-pixel inputs
    (only those where ``fixed``)."""
    if fixed and size != input_size:
        raise ValueError(
            f"input size {size} (--input-size, or input_size in a config file) does not fit model {name!r}, "
            f"which takes {input_size}-pixel inputs; leave it out or set it to {input_size}"
        )


#: ``sizer(name, pretrained)``: (input size, whether only that size fits) of a model as it will be built, or None
#: where only the built model tells (e.g. a torchvision ViT's size from a weights file).
Sizer = Callable[[str, Any], tuple[int, bool] | None]


@dataclass(frozen=True)
class _Source:
    factory: Callable[..., FrozenBackbone]
    lister: Callable[[], list[str]]
    description: str
    checker: Callable[[str], None] | None = None
    kind: str = "classifier"
    sizer: Sizer | None = None


_SOURCES: dict[str, _Source] = {}
_TINY_CONFIGS_ADDED = False


def register_backbone_source(
    prefix: str,
    factory: Callable[..., FrozenBackbone],
    lister: Callable[[], list[str]],
    description: str = "",
    checker: Callable[[str], None] | None = None,
    kind: str = "classifier",
    sizer: Sizer | None = None,
) -> None:
    """Register a model source, reached as ``"<prefix>:<name>"``.

    ``factory(name, pretrained=..., **kwargs)`` returns a :class:`FrozenBackbone`; ``lister()`` returns example or
    known names (without the prefix) for ``vprompt list models``; ``checker(name)``, where given, raises ValueError
    for a name the source does not have (see :func:`listed_names`), so that a suite can tell without building it.
    ``kind`` is its backbones' :attr:`FrozenBackbone.kind`, which decides a run's default head before one is built;
    ``sizer`` (see :data:`Sizer`), where given, tells a model's input size before it is built.
    """
    _SOURCES[prefix] = _Source(factory, lister, description, checker, kind, sizer)


def listed_names(lister: Callable[[], list[str]], prefix: str = "") -> Callable[[str], None]:
    """A checker for a source whose ``lister`` returns every name it has (``prefix``: how users write them)."""

    def check(name: str) -> None:
        known = lister()
        if name not in known:
            raise ValueError(_unknown_model_message(name, known, prefix))

    return check


def check_model(name: str) -> None:
    """Raise ValueError, with the close matches, when ``--model name`` names no model of a source that can tell
    (one registered with a checker); nothing is built."""
    source, model_name = _split_name(name)
    checker = _SOURCES[source].checker
    if checker is None or model_name.startswith(OPEN_CLIP_SCHEMAS):  # (known once read or fetched)
        return
    try:
        checker(model_name)
    except ValueError as e:  # a bare name that is another source's (tv:vit_b_32 written as vit_b_32) is told so
        other = [f"{p}:{model_name}" for p, src in sorted(_SOURCES.items()) if p != source and src.checker]
        named = [n for n in other if not _raises(check_model, n)] if source == "openclip" else []
        if not named:
            raise
        raise ValueError(f"{e}; another source has that name: --model {', --model '.join(named)}") from None


def _raises(check: Callable[[str], None], name: str) -> bool:
    try:
        check(name)
    except ValueError:
        return True
    return False


def planned_input_size(name: str, pretrained: Any = None) -> tuple[int, bool] | None:
    """(input size, whether only that size fits) of ``--model name`` with ``--pretrained pretrained``, without
    building it; None where its source cannot tell before."""
    source, model_name = _split_name(name)
    sizer = _SOURCES[source].sizer
    return sizer(model_name, pretrained) if sizer is not None else None


def model_kind(name: str) -> str:
    """What ``--model name`` outputs, without building it: ``"clip"`` (image embeddings) or ``"classifier"``."""
    return _SOURCES[_split_name(name)[0]].kind


def _add_packaged_configs() -> None:
    """Make the configs shipped in ``vprompt/model_configs`` (tiny models for tests and demos) known to open_clip."""
    global _TINY_CONFIGS_ADDED
    if _TINY_CONFIGS_ADDED:
        return
    import open_clip

    folder = resources.files("vprompt") / "model_configs"
    open_clip.add_model_config(Path(str(folder)))
    _TINY_CONFIGS_ADDED = True


def _list_open_clip() -> list[str]:
    import open_clip

    _add_packaged_configs()
    return list(open_clip.list_models())


def _create_open_clip(
    name: str,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    weights_like: str | None = None,
    **_: Any,
) -> FrozenBackbone:
    """An open_clip model with the activation (QuickGELU or GELU) and normalization its weights were trained with:
    those of the pretrained tag, or for a checkpoint file those of the tag ``weights_like`` names (the tag the run
    was trained with, when ``vprompt eval --pretrained FILE`` points to its weights on this machine), else those
    every tag of the model shares."""
    import open_clip

    if name.startswith(OPEN_CLIP_SCHEMAS):
        return _open_clip_with_its_weights(name, pretrained, cache_dir)
    check_model(name)
    tags = open_clip.list_pretrained_tags_by_model(name)
    file = local_weights(name, pretrained)
    if _is_none(pretrained):
        _log.warning(
            "model %s: RANDOM weights (no --pretrained, or none)%s",
            name,
            f"; pretrained tags: {', '.join(tags[:6])}" if tags else "",
        )
        pretrained = None
    elif file is None and pretrained not in tags:
        raise ValueError(
            f"--pretrained {pretrained!r} is neither a file nor a pretrained tag of {name}"
            + (f" (tags: {', '.join(tags)})" if tags else " (it has no pretrained tags; give a checkpoint file)")
        )
    is_file = file is not None
    if is_file:
        pretrained = str(file.resolve())  # (not a relative name open_clip could take for a tag)
    if not is_file:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    elif weights_like in tags:
        tag_cfg = open_clip.get_pretrained_cfg(name, weights_like)
    else:
        tag_cfg = _settings_of_every_tag(name, tags)
    from_tag = {"mean": tag_cfg["mean"], "std": tag_cfg["std"]} if is_file and "mean" in tag_cfg else None
    try:
        with (
            fetching_weights(f"--model {name} --pretrained {pretrained}", hub=True)
            if pretrained and not is_file
            else nullcontext()
        ):
            model = open_clip.create_model(
                name,
                pretrained=pretrained,
                cache_dir=cache_dir,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),  # open_clip only warns when a tag needs it
                force_preprocess_cfg=from_tag,
            )
    except Exception as e:  # what open_clip raises on a file it cannot use varies (KeyError, AssertionError, ...)
        if not is_file:
            raise
        why = state_dict_mismatch(e, otherwise=torch_load_failure)  # (open_clip reads the file with torch.load)
        raise ValueError(f"--pretrained {pretrained}: not a checkpoint of {name} ({why})") from e
    return OpenCLIPBackbone(model, open_clip.get_tokenizer(name), name=name)


def _open_clip_with_its_weights(name: str, pretrained: str | None, cache_dir: str | None) -> FrozenBackbone:
    """An open_clip model named ``hf-hub:ORG/REPO`` or ``local-dir:FOLDER``: its config (architecture, mean and
    std) and weights come from that repository or folder, as open_clip saves them (``open_clip_config.json`` and a
    weights file)."""
    import open_clip

    if not _is_none(pretrained):
        raise ValueError(
            f"--pretrained {pretrained!r}: --model {name} brings its own weights; leave --pretrained out (or give "
            "none for random weights of its architecture)"
        )
    random = bool(pretrained and pretrained.strip())  # (none, false or random; unset or blank: its own weights)
    if random and "load_weights" not in inspect.signature(open_clip.create_model).parameters:
        raise ValueError(
            f"--pretrained none: this open_clip_torch ({open_clip.__version__}) cannot leave out the weights of "
            f"--model {name}; pip install -U open_clip_torch"
        )
    if random:
        _log.warning("model %s: RANDOM weights (--pretrained none), its architecture and normalization", name)
    fetching: Any = nullcontext()
    if name.startswith("local-dir:") and not hasattr(open_clip.factory, "LOCAL_DIR_PREFIX"):
        raise ValueError(
            f"--model {name}: this open_clip_torch ({open_clip.__version__}) does not read local-dir: folders; "
            "pip install -U open_clip_torch"
        )
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        weights = [p for pattern in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(pattern)]
        if not (folder / "open_clip_config.json").is_file() or not (weights or random):
            missing = "open_clip_config.json" if not (folder / "open_clip_config.json").is_file() else "weights file"
            raise FileNotFoundError(
                f"--model {name}: no {missing} in {folder}; local-dir: reads a folder as open_clip saves a model "
                "(open_clip_config.json with its model_cfg, and a .safetensors, .bin or .pth weights file)"
            )
    else:
        fetching = fetching_weights(
            f"--model {name}", "copy the repository's files into a folder and pass --model local-dir:FOLDER", hub=True
        )
    with fetching:
        # (load_weights came with open_clip 3, as local-dir: did; an hf-hub: model on open_clip 2 gets none of it)
        model = open_clip.create_model(name, cache_dir=cache_dir, **({"load_weights": False} if random else {}))
    return OpenCLIPBackbone(model, open_clip.get_tokenizer(name), name=name)


def _open_clip_size(name: str, pretrained: Any = None) -> tuple[int, bool] | None:
    import open_clip

    _add_packaged_configs()
    if name.startswith(OPEN_CLIP_SCHEMAS):  # known once its config is read or fetched, when it is built
        return None
    cfg = open_clip.get_model_config(name)
    if not cfg:
        return None
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size), True


def _settings_of_every_tag(name: str, tags: Sequence[str]) -> dict[str, Any]:
    """For a weights file that names no tag: the normalization and activation all of ``name``'s pretrained
    ``tags`` share (SigLIP's mean and std of 0.5, the OpenAI ResNets' QuickGELU), else open_clip's defaults."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfgs = [open_clip.get_pretrained_cfg(name, t) for t in tags]
    norms = {(tuple(c.get("mean", OPENAI_DATASET_MEAN)), tuple(c.get("std", OPENAI_DATASET_STD))) for c in cfgs}
    gelus = {bool(c.get("quick_gelu", False)) for c in cfgs}
    settings: dict[str, Any] = {"quick_gelu": gelus.pop()} if len(gelus) == 1 else {}
    if len(gelus) > 1:  # (ViT-B-32: openai's weights were trained with QuickGELU, laion2b's with GELU)
        quick = [t for t, c in zip(tags, cfgs) if c.get("quick_gelu")]
        named = f"{name}-quickgelu"
        fix = f"--model {named}" if named in open_clip.list_models() else "a -quickgelu model name"
        _log.warning(
            "model %s: a weights file is loaded with GELU, but its tags %s were trained with QuickGELU: for their "
            "weights give %s (the same weights, the activation they need)",
            name, ", ".join(quick), fix,
        )  # fmt: skip
    if len(norms) == 1:
        ((mean, std),) = norms
        settings.update(mean=mean, std=std)
    elif norms:
        _log.warning(
            "model %s: the mean and std of a weights file are open_clip's defaults, since its pretrained tags (%s) "
            "differ in them; with eval --pretrained FILE, a run trained from a tag gets that tag's",
            name, ", ".join(tags),
        )  # fmt: skip
    return settings


def _unknown_model_message(name: str, known: Sequence[str], prefix: str = "") -> str:
    hint = did_you_mean(name, known, prefix, cutoff=0.5)
    return f"unknown --model {prefix + name!r}{hint} (`vprompt list models` shows them)"


register_backbone_source(
    "openclip",
    _create_open_clip,
    _list_open_clip,
    "open_clip CLIP models, bare names (--pretrained TAG | FILE | none; each model's tags follow it)",
    listed_names(_list_open_clip),
    kind="clip",
    sizer=_open_clip_size,
)


#: open_clip's names of a model whose config and weights are fetched from the Hugging Face Hub or read from a folder.
OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")


def brings_own_weights(name: str) -> bool:
    """Whether ``--model name`` is an open_clip model whose config and weights come with it (``hf-hub:``,
    ``local-dir:``, with or without ``openclip:``): it takes no --pretrained, and ``none`` asks for random weights."""
    try:
        source, model_name = _split_name(name)
    except ValueError:  # (an unknown source: refused when the model is built)
        return False
    return source == "openclip" and model_name.startswith(OPEN_CLIP_SCHEMAS)


#: ``--pretrained`` values that ask for a source's default weights, and for random ones (every source reads them).
_DEFAULT_TAGS = ("default", "true", "pretrained")
_NONE_TAGS = ("", "none", "false", "random")


def _is_none(pretrained: str | Path | None) -> bool:
    return pretrained is None or (isinstance(pretrained, str) and pretrained.strip().lower() in _NONE_TAGS)


def _is_default(pretrained: str | Path | None) -> bool:
    return isinstance(pretrained, str) and pretrained.strip().lower() in _DEFAULT_TAGS


def local_weights(name: str, pretrained: str | None) -> Path | None:
    """The weights file or folder on this machine that ``--model name --pretrained pretrained`` reads, as the model's
    source decides it; None for random weights or weights named by a tag (a download or cache: ``default``,
    ``cifar10``, an open_clip tag), even where a file or folder of that name is in the working directory."""
    if _is_none(pretrained) or _is_default(pretrained):
        return None
    try:
        source, model = _split_name(name)
    except ValueError:
        return None
    if _is_weights_name(source, model, str(pretrained)):  # (a file of that name is ./name)
        return None
    where = Path(str(pretrained)).expanduser()
    if source == "openclip":  # (a folder is no open_clip checkpoint)
        return where if where.is_file() else None
    return where if where.exists() else None


def _is_weights_name(source: str, model: str, pretrained: str) -> bool:
    """Whether ``pretrained`` names weights of ``model`` that its source downloads: an open_clip tag, a torchvision
    weights name, ``cifar10``."""
    if source == "cifar":
        from .cifar_resnet import _PRETRAINED_ALIASES

        return pretrained.lower() in _PRETRAINED_ALIASES
    if source == "openclip" and not model.startswith(OPEN_CLIP_SCHEMAS):
        import open_clip

        return pretrained in open_clip.list_pretrained_tags_by_model(model)
    if source == "tv":
        import torchvision.models as tvm

        try:
            return pretrained in tvm.get_model_weights(model).__members__
        except (KeyError, ValueError):  # an unknown model: refused when it is built
            return False
    return False


def _split_name(name: str) -> tuple[str, str]:
    if name.startswith(OPEN_CLIP_SCHEMAS):
        return "openclip", name
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _SOURCES:
        return prefix, rest
    if sep and not Path(name).exists():
        raise ValueError(
            f"unknown model source {prefix!r} in --model {name!r} (sources: {', '.join(sorted(_SOURCES))}; "
            "open_clip models take no prefix)"
        )
    return "openclip", name


def create_backbone(
    name: str, pretrained: str | None = None, device: str | torch.device = "cpu", **kwargs: Any
) -> FrozenBackbone:
    """Build a frozen backbone from its name.

    Args:
        name: ``ViT-B-32`` (open_clip) or ``<source>:<name>`` for registered sources.
        pretrained: a pretrained tag, a local checkpoint path, or None (random init).
        device: where to put it.
        **kwargs: passed to the source's factory (e.g. ``cache_dir``).
    """
    for key, value in (("name", name), ("pretrained", pretrained)):
        if not isinstance(value, str) and not (key == "pretrained" and (value is None or isinstance(value, Path))):
            what = "a tag, a checkpoint path or None" if key == "pretrained" else "a model name such as 'ViT-B-32'"
            raise TypeError(f"create_backbone: {key} {value!r} must be {what}, not a {type(value).__name__}")
    source, model_name = _split_name(name)
    backbone = _SOURCES[source].factory(
        model_name, pretrained=None if pretrained is None else str(pretrained), **kwargs
    )
    return backbone.to(device)


def source_description(source: str) -> str:
    """What ``vprompt list models`` says of a model source (what it is, which ``--pretrained`` values it takes)."""
    return _SOURCES[source].description


def list_models() -> dict[str, list[str]]:
    """Known model names per source (``{"openclip": [...], ...}``), with the prefix as users type it."""
    out = {}
    for prefix, src in sorted(_SOURCES.items()):
        names = src.lister()
        out[prefix] = names if prefix == "openclip" else [f"{prefix}:{n}" for n in names]
    return out


# The classifier sources (timm:, tv:, cifar:) register themselves on import; imported last because they subclass
# FrozenBackbone and call register_backbone_source, both defined above. A module import, not a name import, so that
# importing vprompt.classifiers first (it imports this module) finds no half-defined name.
from . import classifiers  # noqa: E402


def __getattr__(name: str) -> Any:  # ``from vprompt.backbones import ClassifierBackbone``, as before it moved
    if name == "ClassifierBackbone":
        return classifiers.ClassifierBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
