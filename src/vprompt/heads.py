"""Output heads: map the frozen backbone's output to the task's classes.

* :class:`ClipTextHead`: cosine similarity between image embeddings and the class names' text embeddings,
  times CLIP's logit scale. The text embeddings are constant, so they are computed once per run
  (:func:`build_text_classifier`) and stored as a buffer.
* :class:`LabelMappingHead` (for classifiers): target logits are picked source logits, ``source_logits[:, mapping]``,
  with a one-to-one ``mapping`` (a long buffer, so it is saved with the prompt): random (RLM), frequency-based and
  computed once with the current prompt (FLM), or recomputed every k epochs (ILM); see :func:`greedy_label_mapping`.
* :class:`LinearHead`: a trainable linear layer on the backbone output.

A head is an ``nn.Module`` mapping backbone output ``(B, D)`` to logits ``(B, num_classes)``. Heads that adapt
during training (label mapping) override :meth:`Head.epoch_start`, which the engine calls before every epoch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LABEL_MAPS, TEMPLATES, check_head_choice
from .data.splits import torch_seed

__all__ = [
    "Head",
    "ClipTextHead",
    "LabelMappingHead",
    "LinearHead",
    "LABEL_MAPS",
    "create_label_mapping",
    "resolve_head",
    "greedy_label_mapping",
    "prediction_counts",
    "build_text_classifier",
    "clean_classname",
    "resolve_templates",
    "EVP_TEMPLATE",
]

#: The single template of the EVP reference and VP.
EVP_TEMPLATE = "this is a photo of a {}"

Template = str | Callable[[str], str]


def resolve_head(head: str, label_map: str | None, kind: str) -> str:
    """The head a run uses: ``label_map`` where given (``head`` must then be ``auto`` or the same), else ``head``,
    with ``auto`` the text head for a CLIP model and FLM label mapping for a classifier (``kind``). Each is one of
    its choices (:data:`~vprompt.config.HEADS`, :data:`~vprompt.config.LABEL_MAPS`), as a RunConfig checks."""
    if label_map is not None:
        check_head_choice(head, label_map)
        return label_map
    if head == "auto":
        return "text" if kind == "clip" else "flm"
    return head


def clean_classname(name: str) -> str:
    """Lower-case a class name and replace ``_`` and ``-`` by spaces, collapsing runs of spaces."""
    return re.sub(r"\s+", " ", name.lower().replace("_", " ").replace("-", " ")).strip()


def resolve_templates(kind: str, dataset_templates: Sequence[Template] | None = None) -> list[Template]:
    """Templates by name: ``single`` (EVP's one template), ``ensemble`` (the dataset's own ensemble where the
    registry has one, else the 80 ImageNet templates of the CLIP paper) or ``imagenet80`` (those 80 always)."""
    if kind == "single":
        return [EVP_TEMPLATE]
    if kind == "ensemble" and dataset_templates:
        return list(dataset_templates)
    if kind in ("ensemble", "imagenet80"):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"unknown --templates {kind!r} (choose from {', '.join(TEMPLATES)})")


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

    def epoch_start(self, epoch: int, source_predictions: Callable[[], tuple[Tensor, Tensor]]) -> bool:
        """Called before each training epoch. ``source_predictions()`` computes the backbone's predicted classes
        over the training set with the current prompt (and the labels); call it only when needed. Returns whether
        the head changed."""
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
        # fp32 even under autocast: logits of about 100 x cosine in bf16 are rounded to steps of 0.125, which ties
        # and flips the top class
        with torch.autocast(features.device.type, enabled=False):
            feats = F.normalize(features.float(), dim=-1)
            return self.logit_scale * feats @ self.text_features.t()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, logit_scale={self.logit_scale:.2f}"


# --------------------------------------------------------------------------------------------------------------
# Label mapping (ILM-VP, Chen et al. 2023): target class t reads the logit of source class mapping[t]

_log = logging.getLogger(__name__)


def prediction_counts(predictions: Tensor, labels: Tensor, num_classes: int, num_source_classes: int) -> Tensor:
    """The count table ``(num_classes, num_source_classes)``: how often each target class is predicted as each
    source class (``predictions`` are source-class indices, ``labels`` target-class indices)."""
    flat = labels.long().flatten() * num_source_classes + predictions.long().flatten()
    return torch.bincount(flat, minlength=num_classes * num_source_classes).view(num_classes, num_source_classes)


def greedy_label_mapping(counts: Tensor) -> Tensor:
    """One-to-one target -> source assignment from a count table, greedily (FLM).

    Repeatedly take the largest remaining count, assign its target to its source, and remove that row and column.
    Ties go to the lowest target index, then the lowest source index, so every process and every rerun computes the
    same map.

    Args:
        counts: ``(num_classes, num_source_classes)`` with ``num_classes <= num_source_classes``.

    Returns:
        ``(num_classes,)`` long tensor of distinct source indices (on the CPU).
    """
    t, s = counts.shape
    if t > s:
        raise ValueError(f"cannot map {t} target classes one-to-one onto {s} source classes")
    table = counts.detach().to("cpu", torch.float64).clone()
    mapping = torch.empty(t, dtype=torch.long)
    for _ in range(t):
        # argmax returns the first maximal element in row-major order: that is the tie-break described above.
        target, source = divmod(int(torch.argmax(table)), s)
        mapping[target] = source
        table[target, :] = -1.0
        table[:, source] = -1.0
    return mapping


class LabelMappingHead(Head):
    """Logits of target class ``t`` = source logit ``mapping[t]`` of a frozen classifier.

    ``mapping`` is a long buffer (saved in ``prompt.safetensors`` and ``last.pt``, so evaluation and resumed runs use
    the map the prompt was trained with); ``-1`` means not computed yet.

    Args:
        num_classes: target classes.
        num_source_classes: the classifier's classes; at least ``num_classes``.
        mode: ``identity`` (target ``t`` -> source ``t``: the no-mapping baseline), ``rlm`` (random, fixed by
            ``seed``), ``flm`` (frequency-based, computed at the first epoch with the
            current prompt) or ``ilm`` (FLM recomputed every ``interval`` epochs).
        seed: RLM's seed.
        interval: ILM's k.
        classnames: target class names (for the log).
        source_classnames: source class names (for the log).
    """

    def __init__(
        self,
        num_classes: int,
        num_source_classes: int,
        mode: str = "flm",
        seed: int = 0,
        interval: int = 1,
        classnames: Sequence[str] | None = None,
        source_classnames: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if mode not in LABEL_MAPS:
            raise ValueError(f"unknown --label-map {mode!r} (choose from {', '.join(LABEL_MAPS)})")
        if num_classes > num_source_classes:
            raise ValueError(
                f"--label-map {mode} maps target classes one-to-one onto the model's classes, but the dataset has "
                f"{num_classes} classes and the model only {num_source_classes}; use --head linear instead"
            )
        if interval < 1:
            raise ValueError(f"--ilm-interval {interval} must be at least 1")
        self.mode = mode
        self.num_classes = num_classes
        self.num_source_classes = num_source_classes
        self.interval = interval
        self.classnames = list(classnames) if classnames is not None else None
        self.source_classnames = list(source_classnames) if source_classnames is not None else None
        self.register_buffer("mapping", torch.full((num_classes,), -1, dtype=torch.long))
        self._ready = False  # a Python mirror of "mapping is computed", so forward never syncs with the device
        if mode == "rlm":
            gen = torch.Generator().manual_seed(torch_seed(seed))
            self.mapping.copy_(torch.randperm(num_source_classes, generator=gen)[:num_classes])
            self._ready = True
        elif mode == "identity":
            self.mapping.copy_(torch.arange(num_classes))
            self._ready = True

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Loading a saved map (eval, resume) makes the head ready without recomputing anything.
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        outside = self.mapping[(self.mapping < -1) | (self.mapping >= self.num_source_classes)]
        if len(outside):  # another model's map: it would index past this model's logits
            error_msgs.append(
                f"its label map reads source class {int(outside[0])} of a model with {self.num_source_classes}"
            )
        self._ready = bool((self.mapping >= 0).all())

    def forward(self, source_logits: Tensor) -> Tensor:
        if not self._ready:
            raise RuntimeError(
                f"label mapping {self.mode} is not computed yet: call epoch_start() with the source predictions first"
            )
        return source_logits[:, self.mapping]

    def epoch_start(self, epoch: int, source_predictions: Callable[[], tuple[Tensor, Tensor]]) -> bool:
        """FLM: compute the map once (first call); ILM: recompute it every ``interval`` epochs; RLM, identity: never."""
        if self.mode in ("rlm", "identity"):
            return False
        due = not self._ready or (self.mode == "ilm" and epoch % self.interval == 0)
        if not due:
            return False
        predictions, labels = source_predictions()
        counts = prediction_counts(predictions, labels, self.num_classes, self.num_source_classes)
        new = greedy_label_mapping(counts).to(self.mapping.device)
        changed = not torch.equal(new, self.mapping)
        self.mapping.copy_(new)
        self._ready = True
        if changed:
            _log.info("%s label map at epoch %d: %s", self.mode, epoch + 1, self.describe())
        return changed

    def describe(self, limit: int = 10) -> str:
        """``target->source`` pairs, with names when known (the first ``limit``)."""
        pairs = []
        for t, s in enumerate(self.mapping.tolist()[:limit]):
            tn = self.classnames[t] if self.classnames else str(t)
            sn = self.source_classnames[s] if self.source_classnames and s >= 0 else str(s)
            pairs.append(f"{tn}->{sn}")
        more = f", ... ({self.num_classes} in all)" if self.num_classes > limit else ""
        return ", ".join(pairs) + more

    def extra_repr(self) -> str:
        interval = f", interval={self.interval}" if self.mode == "ilm" else ""
        return f"mode={self.mode!r}, classes={self.num_classes}, source_classes={self.num_source_classes}{interval}"


def create_label_mapping(
    mode: str,
    num_classes: int,
    num_source_classes: int,
    seed: int = 0,
    interval: int = 1,
    classnames: Sequence[str] | None = None,
    source_classnames: Sequence[str] | None = None,
) -> LabelMappingHead:
    """A :class:`LabelMappingHead` by name (``identity``, ``rlm``, ``flm``, ``ilm``)."""
    return LabelMappingHead(num_classes, num_source_classes, mode, seed, interval, classnames, source_classnames)


class LinearHead(Head):
    """A trainable linear layer on the backbone output (source logits of a classifier, a CLIP image embedding).

    The engine trains it with AdamW at :attr:`lr`, next to the prompt.

    Args:
        in_features: size of the backbone output.
        num_classes: target classes.
        lr: its learning rate.
    """

    def __init__(self, in_features: int, num_classes: int, lr: float = 1e-3) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.num_classes = num_classes
        self.lr = float(lr)

    def forward(self, features: Tensor) -> Tensor:
        with torch.autocast(features.device.type, enabled=False):  # fp32 logits, as the other heads give: bf16 ties
            return self.linear(features.float())

    def extra_repr(self) -> str:
        return f"lr={self.lr:g}"
