"""From a :class:`~vprompt.config.RunConfig` to modules: backbone, prompter, head, and their composition.

The data path, one direction: uint8 batch -> float [0, 1] -> input diversity (training only) ->
prompter -> frozen backbone (normalizes with its own mean/std) -> head -> logits.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backbones import FrozenBackbone, check_input_size, create_backbone, planned_input_size
from .config import HEADS, RunConfig
from .heads import (
    LABEL_MAPS,
    ClipTextHead,
    Head,
    LinearHead,
    build_text_classifier,
    create_label_mapping,
    resolve_head,
    resolve_templates,
)
from .prompters import Prompter, create_prompter

__all__ = ["PromptedModel", "build_backbone", "build_prompter", "build_head", "build_model", "to_float_rgb"]

_log = logging.getLogger(__name__)


def to_float_rgb(images: Tensor, device: torch.device | str) -> Tensor:
    """uint8 ``(B, C, H, W)`` -> float ``(B, 3, H, W)`` in [0, 1] on ``device``; grayscale is repeated to RGB."""
    x = images.to(device, non_blocking=True)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class StateMismatch(ValueError):
    """A saved prompter or head state that does not fit the module built for it; ``detail``: what differs."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class PromptedModel(nn.Module):
    """``head(backbone(prompter(x)))`` for pixels ``x`` in [0, 1]. Only the prompter (and a trainable head) learn."""

    def __init__(self, prompter: Prompter, backbone: FrozenBackbone, head: Head) -> None:
        super().__init__()
        self.prompter = prompter
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(self.prompter(x)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def artifact_state(self) -> dict[str, Tensor]:
        """What a trained prompt is: prompter and head state, without the (frozen, large) backbone."""
        out = {f"prompter.{k}": v for k, v in self.prompter.state_dict().items()}
        out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return out

    def load_artifact_state(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`artifact_state`, strict.

        Raises:
            StateMismatch: the saved state does not fit this prompter or head (other sizes, another model's label
                map)."""
        for prefix, module in (("prompter.", self.prompter), ("head.", self.head)):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            mask = getattr(module, "mask", None)  # fixed by the sizes: a saved one must be the same
            mask = mask.clone() if isinstance(mask, Tensor) else None
            try:
                module.load_state_dict(sub, strict=True)
                if mask is not None and not torch.equal(mask, module.mask):
                    raise RuntimeError("\nits mask has another border")
            except RuntimeError as e:
                detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
                other = (
                    "other sizes (--input-size, --inner-size, --prompt-size)"
                    if module is self.prompter
                    else "another model or dataset"
                )
                raise StateMismatch(
                    f"the saved {prefix[:-1]} does not fit this run's ({detail}); was it saved with {other}?", detail
                ) from e


def build_backbone(cfg: RunConfig, device: torch.device | str, weights_like: str | None = None) -> FrozenBackbone:
    """The frozen backbone named by ``cfg.model`` / ``cfg.pretrained``; ``weights_like`` is the pretrained tag whose
    activation and normalization a checkpoint file in ``cfg.pretrained`` holds weights of."""
    return create_backbone(cfg.model, pretrained=cfg.pretrained, device=device, weights_like=weights_like)


def build_prompter(cfg: RunConfig, backbone: FrozenBackbone) -> Prompter:
    """The prompter of ``cfg`` at the backbone's input size (or ``cfg.input_size`` where the model allows). Sizes
    ``cfg`` left to their defaults are set in it as they came out, so that the run's saved config holds them."""
    backbone.check_input_size(cfg.input_size or backbone.input_size)
    prompter = _prompter(cfg, backbone.input_size, scale=backbone.std.flatten().tolist())
    given = {key: value for key, value in prompter.geometry().items() if getattr(cfg, key) is None}
    for key, value in given.items():
        setattr(cfg, key, value)
    cfg.record_filled(given)  # (the model's: another model or method, given this config, takes its own)
    return prompter.to(backbone.mean.device)


def check_sizes(cfg: RunConfig) -> None:
    """Raise ValueError, as :func:`build_prompter` would, where ``cfg``'s sizes do not fit its model, told before
    the model is built or its weights downloaded (where its source can tell the model's input size)."""
    sized = planned_input_size(cfg.model, cfg.pretrained)
    if sized is not None:
        size, fixed = sized
        check_input_size(cfg.model, cfg.input_size or size, size, fixed)
        planned_sizes(cfg, size)


def planned_sizes(cfg: RunConfig, model_input_size: int) -> dict[str, int]:
    """The sizes ``cfg`` leaves to the model, as :func:`build_prompter` sets them on a model whose own input size is
    ``model_input_size``, without building the model."""
    geometry = _prompter(cfg, model_input_size, scale=[1.0]).geometry()  # (the scale changes no size)
    return {k: v for k, v in geometry.items() if getattr(cfg, k) is None}


def _prompter(cfg: RunConfig, model_input_size: int, scale: Sequence[float] | None = None) -> Prompter:
    return create_prompter(
        cfg.prompter,
        input_size=cfg.input_size or model_input_size,
        inner_size=cfg.inner_size,
        prompt_size=cfg.prompt_size,
        scale=scale,
    )


def check_head(cfg: RunConfig, kind: str) -> str:
    """The head ``cfg`` asks for on a model of ``kind`` (``clip``, ``classifier``, as
    :func:`~vprompt.backbones.model_kind` tells it before the model is built), refused where the model has no such
    output or a run of no epochs would leave the head untrained."""
    head = resolve_head(cfg.head, cfg.label_map, kind)
    if head in LABEL_MAPS and kind != "classifier":  # (a linear head is trained: no choice for a run of no epochs)
        heads = "--head text or --head linear" if cfg.epochs else "--head text"
        raise ValueError(
            f"--label-map/--head {head} maps a classifier's logits; {cfg.model!r} is a {kind} model (use {heads})"
        )
    if head == "text" and kind != "clip":
        raise ValueError(f"--head text needs a CLIP model; {cfg.model!r} is a {kind}")
    if head == "linear" and not cfg.epochs:
        what, fix = ("--epochs 0", "give --epochs, or a label map")
        if cfg.method == "zeroshot":
            what, fix = ("zeroshot", "vprompt linprobe trains a linear classifier on frozen features; vprompt train "
                         "--head linear, one with a prompt")  # fmt: skip
        raise ValueError(
            f"--head {head} is trained with the prompt, and {what} trains nothing: it would be reported untrained "
            f"({fix})"
        )
    return head


def build_head(
    cfg: RunConfig,
    backbone: FrozenBackbone,
    classnames: Sequence[str],
    dataset_templates: Sequence[str] | None = None,
) -> Head:
    """The head ``cfg.head`` (or ``cfg.label_map``) asks for.

    ``auto`` is the text head for CLIP models and FLM label mapping for classifiers; ``rlm``/``flm``/``ilm`` are
    label mappings over a classifier's logits; ``linear`` is a trainable linear layer on the backbone output.
    """
    head = check_head(cfg, backbone.kind)
    if head in LABEL_MAPS:
        if not cfg.epochs and len(classnames) > backbone.num_source_classes:  # (--head linear would be untrained)
            raise ValueError(
                f"--label-map {head} maps target classes one-to-one onto the model's classes, but the dataset has "
                f"{len(classnames)} classes and the model only {backbone.num_source_classes}; a run that trains "
                "nothing has no other head: vprompt linprobe fits a linear classifier on the frozen features, "
                "vprompt train --head linear trains one with a prompt"
            )
        mapping = create_label_mapping(
            head,
            num_classes=len(classnames),
            num_source_classes=backbone.num_source_classes,
            seed=cfg.seed,
            interval=cfg.ilm_interval,
            classnames=classnames,
            source_classnames=getattr(backbone, "source_classnames", None),
        )
        return mapping.to(backbone.mean.device)
    if head == "linear":
        linear = LinearHead(_output_dim(backbone), len(classnames), lr=1e-3 if cfg.head_lr is None else cfg.head_lr)
        return linear.to(backbone.mean.device)
    if head != "text":  # (a RunConfig checks its head; one changed after it was made is not)
        raise ValueError(f"unknown --head {head!r} (choose from {', '.join(HEADS)})")
    templates = resolve_templates(cfg.templates or "single", dataset_templates)
    text = build_text_classifier(backbone.encode_text, classnames, templates)
    _log.info("text head: %d classes x %d templates, computed once", len(classnames), len(templates))
    return ClipTextHead(text, backbone.logit_scale).to(backbone.mean.device)


@torch.no_grad()
def _output_dim(backbone: FrozenBackbone) -> int:
    """Size of the backbone output: declared by classifiers, else measured with one blank image."""
    dim = getattr(backbone, "output_dim", None)
    if dim:
        return int(dim)
    blank = torch.zeros(1, 3, backbone.input_size, backbone.input_size, device=backbone.mean.device)
    return int(backbone(blank).shape[-1])


def build_model(
    cfg: RunConfig,
    classnames: Sequence[str],
    dataset_templates: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    backbone: FrozenBackbone | None = None,
) -> PromptedModel:
    """Backbone, prompter and head of ``cfg`` for the given classes, on ``device``. As :func:`~vprompt.engine.fit`,
    it fills the sizes ``cfg`` leaves to the model in a copy: ``cfg`` stays as it was, for another model too."""
    cfg = copy.copy(cfg)
    backbone = backbone if backbone is not None else build_backbone(cfg, device)
    prompter = build_prompter(cfg, backbone)
    head = build_head(cfg, backbone, classnames, dataset_templates)
    return PromptedModel(prompter, backbone, head)
