"""The linear-probe baseline: multinomial logistic regression on frozen, cached features.

Protocol (the CLIP paper's, on this project's splits):

1. Extract features once with the frozen backbone and no prompt (the images are only resized to the backbone's input
   size S): a CLIP ViT's pooled features before its projection (other CLIP models: the image embedding), or a
   classifier's penultimate features (the input of its classifier layer). They
   are cached in the run folder (``features.safetensors``, written after each split) and reused when the run is
   redone or continued after a stop with the same data and model (``--resume latest``; without it a folder that
   holds them is refused, as one holding a run is).
2. Standardize with the training features' mean and std, then fit ``softmax(W x + b)`` by full-batch L-BFGS on
   ``mean cross-entropy + l2 / 2 * ||W||^2`` (the bias is not penalized) for every strength of the sweep
   (``--l2-grid``, default ``10^-6 .. 10^2`` in half-decade steps), from the strongest to the weakest, each started
   from the previous solution.
3. Select the strength with the best validation accuracy (ties: the stronger one). The validation split is the one
   every other method selects on, held out of the training data. The probe is *not* refit on train + val, so it
   sees exactly the training images the prompts see.
4. Report the selected probe's test accuracy in ``results.json`` (the engine's schema, plus ``l2`` and ``sweep``);
   the probe itself is saved as ``probe.safetensors``.

Reached as ``vprompt linprobe ...``, ``vprompt train --method linprobe ...``, or ``fit(cfg)`` with
``cfg.method == "linprobe"``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import FrozenBackbone, local_weights
from .build import build_backbone, build_prompter, check_sizes, to_float_rgb
from .checkpoint import atomic_write
from .config import RunConfig, l2_strengths
from .data import DataSplits, check_dataset, data_root, get_dataset_spec, make_loader, no_validation_reason
from .data.splits import torch_seed
from .distributed import DistEnv, launched
from .prompters import Prompter
from .runs import (
    DATA_KEYS,
    FEATURES_FILE,
    images_digest,
    pixels_digest,
    refuse_other_run,
    resume_path,
    write_results,
    write_run_files,
)

__all__ = [
    "DEFAULT_L2_GRID",
    "LinearProbe",
    "extract_features",
    "fit_linear_probe",
    "probe_metrics",
    "sweep_l2",
    "train_logistic_regression",
]

_log = logging.getLogger("vprompt")

#: L2 strengths swept by default: 10^-6 .. 10^2, two per decade.
DEFAULT_L2_GRID: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-12, 5))

PROBE_FILE = "probe.safetensors"
_FEATURES_FORMAT = "vprompt-features/2"  # 2: a CLIP ViT's features before its projection


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight.T + bias``."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    l2: float

    def logits(self, features: Tensor) -> Tensor:
        """Raw features ``(N, D)`` -> logits ``(N, C)``."""
        x = (features.to(self.mean) - self.mean) / self.std
        return x @ self.weight.t() + self.bias

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}


# --------------------------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def extract_features(
    backbone: FrozenBackbone,
    prompter: Prompter,
    dataset: Any,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    workers: int = 4,
) -> tuple[Tensor, Tensor]:
    """``backbone.features(prompter(x))`` over a dataset, in order: ``(N, D)`` float32 and ``(N,)`` labels, on CPU."""
    from .engine import autocast

    backbone.eval()
    prompter.eval()
    feats, labels = [], []
    for images, y in make_loader(dataset, batch_size, False, 0, device, workers):
        with autocast(device, precision):
            f = backbone.features(prompter(to_float_rgb(images, device)))
        feats.append(f.float().flatten(1).cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels).long()


def _file_stamp(where: Path | None) -> list[Any] | None:
    """Size and modification time of a weights file, or of every file in a weights folder (a file replaced under
    the same name is other weights); None for weights given by name."""
    if where is None:
        return None
    files = [where] if where.is_file() else sorted(f for f in where.rglob("*") if f.is_file())
    return [[str(f.relative_to(where)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _cache_key(cfg: RunConfig, input_size: int, data: DataSplits) -> dict[str, Any]:
    """What the cached features depend on; a cache made with anything else is recomputed. Beyond the settings,
    the images: the folder they were read from, the files (or the pixels held in memory) and labels of every split,
    and the weights file."""
    key = {k: getattr(cfg, k, None) for k in (*DATA_KEYS, "precision")}
    key["dataset_options"] = get_dataset_spec(cfg.dataset).explicit_options(cfg.dataset_options)
    key["input_size"] = input_size  # (the seed is there for a randomly initialized backbone)
    key["data_dir"] = str(data_root(cfg.data_dir).resolve())
    weights = local_weights(cfg.model, cfg.pretrained)
    key["weights_file"] = _file_stamp(weights)
    if weights is not None:  # a file or folder: where it is, however the path was written
        key["pretrained"] = str(weights.resolve())
    key["images"] = {name: images_digest([ds]) for name, ds in data.parts.items()}
    pixels = {name: pixels_digest([ds]) for name, ds in data.parts.items()}
    if any(pixels.values()):  # (only for images held in memory: a cache of files' features made before stays valid)
        key["pixels"] = pixels
    return key


def _load_cache(path: Path, key: dict[str, Any]) -> dict[str, Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # a damaged cache is recomputed, not fatal
        _log.warning("linprobe: ignoring unreadable feature cache %s (%s)", path, e)
        return None
    if meta.get("format") != _FEATURES_FORMAT or json.loads(meta.get("key", "null")) != json.loads(json.dumps(key)):
        _log.info("linprobe: feature cache %s was made with other settings; extracting again", path)
        return None
    return tensors


def _save_cache(path: Path, tensors: dict[str, Tensor], key: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    meta = {"format": _FEATURES_FORMAT, "key": json.dumps(key)}
    data = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=meta))


# --------------------------------------------------------------------------------------------------------------
# Logistic regression

#: Below this many multiply-adds per evaluation (N * D * C), a CPU fit runs on one thread.
_SMALL_PROBLEM = 20_000_000


@contextlib.contextmanager
def _one_thread_if_small(x: Tensor, num_classes: int) -> Iterator[None]:
    """Small full-batch problems are dominated by per-op thread synchronization: one thread is several times faster,
    and tens of times faster when the cores are shared with other processes."""
    if x.device.type != "cpu" or x.numel() * num_classes >= _SMALL_PROBLEM:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_logistic_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
) -> tuple[Tensor, Tensor, int]:
    """Multinomial logistic regression by full-batch L-BFGS: minimizes ``mean CE + l2 / 2 * ||W||^2``.

    Args:
        x: ``(N, D)`` features (standardize them first; the problem is then well conditioned).
        y: ``(N,)`` labels in ``[0, num_classes)``.
        num_classes: C.
        l2: the penalty on the weights (not the bias).
        init: ``(weight, bias)`` to start from (a warm start); zeros otherwise.
        max_iter: L-BFGS iteration cap.

    Returns:
        ``(weight (C, D), bias (C,), iterations)``.
    """
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device)
        bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    else:
        weight, bias = (t.detach().clone().to(x) for t in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        # (in float64 from the logits on: float32 rounds a nearly separable set's tiny loss to steps the line
        # search cannot tell apart, and stops it far from the minimum; the matrix product keeps the features' type)
        logits = (x @ weight.t() + bias).double()
        loss = F.cross_entropy(logits, y) + 0.5 * l2 * weight.double().pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread_if_small(x, num_classes):
        opt.step(closure)
    iterations = int(opt.state[weight].get("n_iter", 0))
    return weight.detach(), bias.detach(), iterations


def probe_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and count: the schema of :func:`vprompt.engine.evaluate`."""
    from .engine import metric_sums, metrics_of

    return metrics_of(metric_sums(logits, y))


def _strengths(grid: Any, has_val: bool, no_val: str = "no validation features were given") -> list[float]:
    """The L2 strengths of ``grid``, strongest first, or a ValueError: several need a validation split to choose
    between them (``no_val``: why there is none)."""
    strengths = l2_strengths(grid)[::-1]
    if not has_val and len(strengths) > 1:
        raise ValueError(
            f"linprobe selects the L2 strength on the validation split, but there is none ({no_val}); hold some "
            "training data out (--val-fraction 0.1), or give a single --l2-grid value"
        )
    return strengths


def sweep_l2(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None,
    num_classes: int,
    grid: Any = DEFAULT_L2_GRID,
    max_iter: int = 1000,
) -> tuple[LinearProbe, list[dict[str, Any]]]:
    """Fit a probe per L2 strength and select on validation accuracy (ties: the stronger penalty).

    Args:
        train: training ``(features, labels)``.
        val: validation ``(features, labels)``; None only with a single strength in ``grid``.
        num_classes: C.
        grid: the strengths; visited strongest first, each fit warm-started from the previous one.
        max_iter: L-BFGS iterations per strength.

    Returns:
        The selected probe and one record per strength (``l2``, ``train_acc1``, ``val_acc1``, ``val_loss``,
        ``iterations``, ``seconds``).
    """
    strengths = _strengths(grid, val is not None)
    x, y = train
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features: leave them at 0 after centering
    xs = (x - mean) / std
    xv = ((val[0].to(x) - mean) / std) if val is not None else None
    records: list[dict[str, Any]] = []
    best: tuple[float, LinearProbe] | None = None
    state: tuple[Tensor, Tensor] | None = None
    for l2 in strengths:
        start = time.perf_counter()
        weight, bias, iters = train_logistic_regression(xs, y, num_classes, l2, init=state, max_iter=max_iter)
        state = (weight, bias)
        record: dict[str, Any] = {"l2": l2, "train_acc1": probe_metrics(xs @ weight.t() + bias, y)["acc1"]}
        score = 0.0
        if xv is not None:
            m = probe_metrics(xv @ weight.t() + bias, val[1].to(y))
            record.update(val_acc1=m["acc1"], val_loss=m["loss"])
            score = m["acc1"]
        record.update(iterations=iters, seconds=time.perf_counter() - start)
        records.append(record)
        _log.info(
            "linprobe l2 %.1e: train acc %.2f%s (%d L-BFGS iterations)", l2, record["train_acc1"],
            f", val acc {record['val_acc1']:.2f}" if xv is not None else "", iters,
        )  # fmt: skip
        if best is None or score > best[0]:
            best = (score, LinearProbe(mean, std, weight, bias, l2))
    assert best is not None
    return best[1], records


# --------------------------------------------------------------------------------------------------------------
# A whole run


def _check_settings(cfg: RunConfig) -> None:
    """Refuse a run folder that holds a run when not asked to redo it (what a probe would ignore is refused with
    the settings: :func:`vprompt.config.resolve_config`)."""
    if cfg.resume not in (None, "latest"):
        raise ValueError(f"--resume {cfg.resume!r}: a linear probe resumes only as 'latest' (reusing cached features)")
    resume_path(cfg)  # refuses a folder holding a run unless asked to redo it


def fit_linear_probe(cfg: RunConfig) -> dict[str, Any]:
    """Run the linear-probe baseline of ``cfg`` in its run folder; returns the results (also ``results.json``).
    It is :func:`vprompt.engine.fit` of ``cfg`` with ``method="linprobe"``: its threads, seeding and the rest are
    any run's.

    Raises:
        ValueError: launched with several processes, no validation split for a sweep, or bad settings.
    """
    from .engine import fit

    return fit(cfg if cfg.method == "linprobe" else cfg.replace(method="linprobe"))


def run_linear_probe(cfg: RunConfig) -> dict[str, Any]:
    """:func:`fit_linear_probe` once :func:`vprompt.engine.fit` has set the run's threads and kernels."""
    from .engine import on_device, resolve_device, run_folder

    if launched().enabled:
        raise ValueError("linprobe runs in one process (features are extracted once); launch it without torchrun")
    env = DistEnv()
    device = resolve_device(cfg.device, env)
    _check_settings(cfg)
    with run_folder(cfg.run_dir, env), on_device(device):
        return _fit_probe(cfg, env, device)


def _fit_probe(cfg: RunConfig, env: DistEnv, device: torch.device) -> dict[str, Any]:
    from .engine import data_for_run, setup_logging

    grid = cfg.l2_grid or DEFAULT_L2_GRID
    run_dir = cfg.run_dir
    setup_logging(run_dir, env)

    check_dataset(cfg.dataset, cfg.dataset_options)  # a mistyped name is told before a model is downloaded
    check_sizes(cfg)  # and so is an input size the model does not take
    torch.manual_seed(torch_seed(cfg.seed))  # a randomly initialized backbone is then the same on every rerun
    backbone = build_backbone(cfg, device)
    prompter = build_prompter(cfg, backbone)  # the "none" prompter: resize to S only; sets cfg's input size
    if cfg.resume:  # compared on what a probe depends on, nothing it ignores, with the input size resolved
        refuse_other_run(cfg)
    data = data_for_run(cfg, prompter.image_size, random_crop=False)
    _strengths(
        grid, data.val is not None, no_validation_reason(cfg.val_fraction)
    )  # told before any feature is extracted, or a result removed
    write_run_files(cfg, data, run_dir, backbone.input_size)

    key = _cache_key(cfg, prompter.input_size, data)
    cache_path = run_dir / FEATURES_FILE
    cached = _load_cache(cache_path, key) or {}
    start = time.perf_counter()
    for part, ds in data.parts.items():
        if f"{part}_x" in cached:
            _log.info("linprobe: reusing cached %s features from %s", part, cache_path)
            continue
        bs = cfg.eval_batch_size or cfg.batch_size
        x, y = extract_features(backbone, prompter, ds, device, bs, cfg.precision, cfg.workers)
        cached[f"{part}_x"], cached[f"{part}_y"] = x, y
        _log.info("linprobe: %s features %s", part, tuple(x.shape))
        _save_cache(cache_path, cached, key)  # after each split: a run stopped later keeps what was extracted
    feature_seconds = time.perf_counter() - start

    def part(name: str) -> tuple[Tensor, Tensor] | None:
        if f"{name}_x" not in cached:
            return None
        return cached[f"{name}_x"].to(device), cached[f"{name}_y"].to(device)

    train, val, test = part("train"), part("val"), part("test")
    assert train is not None and test is not None
    num_classes = len(data.classnames)
    fit_start = time.perf_counter()
    probe, sweep = sweep_l2(train, val, num_classes, grid)
    fit_seconds = time.perf_counter() - fit_start

    val_metrics = probe_metrics(probe.logits(val[0]), val[1]) if val is not None else None
    test_metrics = probe_metrics(probe.logits(test[0]), test[1])
    lines = "".join(json.dumps(record) + "\n" for record in sweep)  # one record per strength of *this* sweep
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))
    from safetensors.torch import save_file

    probe_state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    meta = {"format": "vprompt-probe/1", "config": json.dumps(cfg.to_dict()), "l2": repr(probe.l2)}
    meta["classnames"] = json.dumps(data.classnames)
    atomic_write(run_dir / PROBE_FILE, lambda tmp: save_file(probe_state, tmp, metadata=meta))

    results = {
        **cfg.identity(),
        "method": "linprobe",
        "n_train": int(train[1].numel()),
        "epochs": 0,
        "selection": "val" if val is not None else "fixed",
        "best_epoch": 0,
        "l2": probe.l2,
        "val": val_metrics,
        "test": test_metrics,
        # A probe has no epochs: the "last" model is the selected one (kept so readers of the schema need no case).
        "val_last": val_metrics,
        "test_last": test_metrics,
        "feature_dim": int(train[0].shape[1]),
        "feature_seconds": feature_seconds,
        "train_seconds": fit_seconds,
        "train_images_per_s": None,
        "sweep": sweep,
    }
    write_results(run_dir, results)
    how = f"selected on val, val acc {val_metrics['acc1']:.2f}" if val_metrics else "the one given, no validation"
    _log.info("done: linear probe test acc %.2f (l2 %.1e %s)", test_metrics["acc1"], probe.l2, how)
    return results
