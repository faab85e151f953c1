"""Output heads: map the frozen backbone's output to the task's classes.

* :class:`ClipTextHead`: cosine similarity between image embeddings and the class names' text embeddings,
  times CLIP's logit scale. The text embeddings are constant, so they are computed once per run
  (:func:`build_text_classifier`) and stored as a buffer.

A head is an ``nn.Module`` mapping backbone output ``(B, D)`` to logits ``(B, num_classes)``. Heads that adapt
during training (label mapping) override :meth:`Head.epoch_start`, which the engine calls before every epoch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Head",
    "ClipTextHead",
    "build_text_classifier",
    "clean_classname",
    "resolve_templates",
    "EVP_TEMPLATE",
]

#: The single template of the EVP reference and VP.
EVP_TEMPLATE = "this is a photo of a {}"

Template = str | Callable[[str], str]


def clean_classname(name: str) -> str:
    """Lower-case a class name and replace ``_`` and ``-`` by spaces (METHOD 2.8), collapsing runs of spaces."""
    return re.sub(r"\s+", " ", name.lower().replace("_", " ").replace("-", " ")).strip()


def resolve_templates(kind: str, dataset_templates: Sequence[Template] | None = None) -> list[Template]:
    """Templates by name: ``single`` (EVP's one template) or ``ensemble`` (the dataset's own ensemble where the
    registry has one, else the 80 ImageNet templates of the CLIP paper)."""
    if kind == "single":
        return [EVP_TEMPLATE]
    if kind == "ensemble":
        if dataset_templates:
            return list(dataset_templates)
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"unknown --templates {kind!r} (choose from single, ensemble)")


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@torch.no_grad()
def build_text_classifier(
    encode_text: Callable[[Sequence[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> Tensor:
    """Text embedding per class, ``(num_classes, D)``, L2-normalized.

    With several templates the normalized embeddings of each class are averaged and normalized again (the CLIP
    paper's prompt ensembling). Class names are cleaned with :func:`clean_classname` first.
    """
    texts = [_fill(t, clean_classname(c)) for c in classnames for t in templates]
    chunks = [encode_text(texts[i : i + batch_size]).float() for i in range(0, len(texts), batch_size)]
    emb = F.normalize(torch.cat(chunks), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


class Head(nn.Module):
    """Base class of heads."""

    num_classes: int

    def epoch_start(self, epoch: int, source_outputs: Callable[[], tuple[Tensor, Tensor]]) -> bool:
        """Called before each training epoch. ``source_outputs()`` computes the backbone's outputs over the
        training set with the current prompt (and the labels); call it only when needed. Returns whether the
        head changed."""
        return False


class ClipTextHead(Head):
    """Logits = ``logit_scale * cos(image embedding, class text embedding)``.

    Args:
        text_features: ``(num_classes, D)`` normalized class embeddings (from :func:`build_text_classifier`).
        logit_scale: CLIP's exponentiated temperature (100 for released models).
    """

    def __init__(self, text_features: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("text_features", text_features.detach().float().clone())
        self.logit_scale = float(logit_scale)
        self.num_classes = text_features.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        feats = F.normalize(features.float(), dim=-1)
        return self.logit_scale * feats @ self.text_features.t()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, logit_scale={self.logit_scale:.2f}"
