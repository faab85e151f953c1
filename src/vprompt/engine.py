"""Training and evaluation: ``train_one_epoch``, ``evaluate``, and ``fit`` (a whole run with its run folder).

Protocol: the best epoch is selected on the validation split (held out of the training data); the test split is
evaluated once at the end, for the selected prompt and for the last one, and never used for selection.

Reproducibility: every epoch re-seeds the RNGs from (seed, epoch) and the data order from (seed, epoch), and
``last.pt`` is written at the end of every epoch, so a run resumed from ``last.pt`` continues exactly as an
uninterrupted run would have (on a GPU, with ``--deterministic``: see :func:`deterministic_kernels`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .backbones import local_weights, model_kind
from .build import (
    PromptedModel,
    StateMismatch,
    build_backbone,
    build_head,
    build_prompter,
    check_head,
    check_sizes,
    to_float_rgb,
)
from .checkpoint import (
    LAST_FILE,
    PROMPT_FILE,
    atomic_write,
    check_output_folder,
    load_prompt,
    load_state,
    save_prompt,
    save_state,
)
from .config import (
    HEADS_WITHOUT_DATA,
    INVOCATION_KEYS,
    RunConfig,
    check_precision,
    kept_pretrained,
    resolve_config,
    with_filled_recorded,
)
from .data import DataSplits, check_dataset, get_dataset_spec, make_loader, prepare_data
from .data.loader import PAD_LABEL
from .data.registry import data_root
from .data.splits import torch_seed
from .distributed import DistEnv, all_reduce_grads, all_reduce_sum, barrier, init_distributed
from .diversity import InputDiversity, create_diversity
from .download import WEIGHTS_SUFFIXES
from .heads import resolve_head
from .optim import create_optimizer, create_scheduler
from .runs import (
    PREVIOUS_RESULTS,
    append_jsonl,
    changed_settings,
    data_changes,
    data_identity,
    folder_lock,
    prompt_meta,
    refuse_other_run,
    result_keys,
    resume_path,
    rewind_run_files,
    same_weights,
    split_changes,
    split_size,
    write_results,
    write_run_files,
)

__all__ = ["train_one_epoch", "evaluate", "fit", "evaluate_checkpoint", "autocast", "resolve_device"]

_log = logging.getLogger("vprompt")
SINGLE_PROCESS = DistEnv()

# --------------------------------------------------------------------------------------------------------------
# Small pieces


def resolve_device(device: str | None, env: DistEnv | None = None) -> torch.device:
    """``--device``, or CUDA (this process's GPU under torchrun) when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1, ...") from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": torch.backends.mps.is_available,
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
    }
    if dev.type not in available:
        raise ValueError(f"--device {device}: runs train on {', '.join(available)}, not {dev.type}")
    if not available[dev.type]():
        name = {"cuda": "CUDA"}.get(dev.type, dev.type)
        raise ValueError(f"--device {device}: {name} is not available on this machine; use --device cpu")
    if dev.type == "cpu" and dev.index:  # (PyTorch takes cpu:5 for the CPU)
        raise ValueError(f"--device {device}: the CPU is one device, cpu; --threads sets how many cores it uses")
    if dev.type == "cuda":
        if env is not None and env.enabled:
            if dev.index not in (None, env.local_rank):  # (every process would share one GPU)
                raise ValueError(
                    f"--device {device} under torchrun: each process takes its own GPU (process {env.local_rank} "
                    f"cuda:{env.local_rank}); pass --device cuda, or CUDA_VISIBLE_DEVICES to choose the GPUs"
                )
            dev = torch.device("cuda", env.local_rank)
        elif dev.index is not None and dev.index >= (count := torch.cuda.device_count()):
            raise ValueError(f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return dev


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the frozen forward/backward: ``fp32`` (none), ``bf16`` or ``fp16``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision)
    _warn_slow_precision(device, precision)
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


@functools.cache
def _warn_slow_precision(device: torch.device, precision: str) -> None:
    """Warns of a half precision that ``device`` runs slowly, once per process and device, not at every batch:
    fp16 on a CPU, and bf16 on an NVIDIA GPU older than the A100 (compute capability 8.0), which has no bf16 units
    and where PyTorch emulates it."""
    if device.type == "cpu" and precision == "fp16":
        _log.warning(
            "--precision fp16 on a CPU: PyTorch's CPU kernels run fp16 far slower than fp32 (30 times in a ResNet-20 "
            "here); bf16 is a CPU's fast half precision"
        )
    elif device.type == "cuda" and precision == "bf16" and not torch.version.hip:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            _log.warning(
                "--precision bf16 on %s (compute capability %d.%d): this GPU has no bf16 units and PyTorch emulates "
                "bf16 on it, slowly; fp16 is its fast half precision",
                torch.cuda.get_device_name(device), major, minor,
            )  # fmt: skip


def _seed_epoch(seed: int, epoch: int) -> None:
    torch.manual_seed(torch_seed(seed * 1_000_003 + epoch + 1))


_console_tag = ""  # in a suite's run process: "[3/12] ", the run's place in the grid


def tag_console(tag: str) -> None:
    """Begin each console line of this process (not its ``log.txt``'s) with ``tag``, and show no progress bar: the
    lines of a suite's runs in their own processes interleave on one terminal, where bars would overwrite each other."""
    global _console_tag
    _console_tag = tag


def _show_progress(env: DistEnv) -> bool:
    return env.is_main and sys.stderr.isatty() and not _console_tag


# --------------------------------------------------------------------------------------------------------------
# Loops


def train_one_epoch(
    model: PromptedModel,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizers: list[torch.optim.Optimizer],
    schedulers: list[torch.optim.lr_scheduler.LRScheduler],
    diversity: Callable[[Tensor, int], Tensor],
    device: torch.device,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    epoch: int = 0,
    log_every: int = 50,
    env: DistEnv = SINGLE_PROCESS,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy, images and throughput, summed over processes.
    ``diversity`` is called as ``diversity(images, real)``, ``real`` being the images of the batch over all processes
    that are not padding: an :class:`~vprompt.diversity.InputDiversity` (``create_diversity("none")`` for none)."""
    model.train()
    params = model.trainable_parameters()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    n_steps = len(loader) if hasattr(loader, "__len__") else None

    def totals() -> list[float]:
        """The summed loss, hits and images so far, over all processes."""
        sums = [total_loss.double(), correct.double(), torch.tensor(seen, dtype=torch.float64, device=device)]
        return all_reduce_sum(torch.stack(sums), env.world_size).tolist()

    bar = tqdm(loader, total=n_steps, desc=f"epoch {epoch + 1}", leave=False, disable=not _show_progress(env))
    for step, (images, labels) in enumerate(bar):
        # The batch over all processes, less the padding of an epoch's end (PAD_LABEL): one process has none, and
        # N processes must take its steps. Each scales its summed loss by N / (real images of that batch), so that
        # the all-reduce's average of the N gradients is the gradient of the mean loss over the batch.
        real = loader.real_images(step) if hasattr(loader, "real_images") else len(labels) * env.world_size
        padded = real < len(labels) * env.world_size
        x = diversity(to_float_rgb(images, device), real)
        y = labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        loss_sum = F.cross_entropy(logits.float(), y, ignore_index=PAD_LABEL, reduction="sum")
        loss = loss_sum * (env.world_size / real)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        all_reduce_grads(params, env.world_size)
        for opt in optimizers:
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None:
            scaler.update()
        for sched in schedulers:
            sched.step()
        total_loss += loss_sum.detach()
        correct += (logits.detach().argmax(-1) == y).sum()  # (a padded image's label is no class)
        seen += int((y != PAD_LABEL).sum()) if padded else len(y)
        if log_every and (step + 1) % log_every == 0:  # (every process takes the same steps: all reach this)
            loss_sum, correct_sum, images = totals()
            rate = images / (time.perf_counter() - start)
            lr = optimizers[0].param_groups[0]["lr"] if optimizers else 0.0
            msg = f"loss {loss_sum / images:.4f} acc {100 * correct_sum / images:.2f}"
            bar.set_postfix_str(msg)
            _log.info("epoch %d step %d/%s %s lr %.4g %.1f img/s", epoch + 1, step + 1, n_steps or "?", msg, lr, rate)
    # The sums are read first: reading them waits for the steps still queued on a GPU, which the time must include
    loss_sum, correct_sum, images = totals()
    seconds = time.perf_counter() - start
    n = max(images, 1.0)
    return {
        "train_loss": loss_sum / n,
        "train_acc1": 100 * correct_sum / n,
        "images": int(images),
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: PromptedModel,
    loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    precision: str = "fp32",
    env: DistEnv = SINGLE_PROCESS,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean loss over ``loader`` (summed over processes)."""
    model.eval()
    n_steps = len(loader) if hasattr(loader, "__len__") else None
    with on_device(device):  # (vprompt eval's too: a loader pins its batches for the current GPU)
        sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, count
        for images, labels in tqdm(loader, total=n_steps, desc=desc, leave=False, disable=not _show_progress(env)):
            x = to_float_rgb(images, device)
            y = labels.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            sums += metric_sums(logits, y)
    all_reduce_sum(sums, env.world_size)
    return metrics_of(sums)


def metric_sums(logits: Tensor, y: Tensor) -> Tensor:
    """Summed cross-entropy, top-1 and top-5 hits and the count of a batch (float64, on ``logits``' device)."""
    logits = logits.float()
    hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == y[:, None]
    # (torch.full, not torch.tensor: a tensor made from a Python number on a GPU waits for the device's queue)
    counts = [hits[:, 0].sum(), hits.any(dim=-1).sum(), torch.full((), len(y), device=logits.device)]
    return torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), *(c.double() for c in counts)])


def metrics_of(sums: Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean loss and count from :func:`metric_sums` (summed over batches)."""
    loss, top1, top5, n = sums.tolist()
    return {"acc1": 100 * top1 / max(n, 1), "acc5": 100 * top5 / max(n, 1), "loss": loss / max(n, 1), "n": int(n)}


@torch.no_grad()
def collect_predictions(
    model: PromptedModel, loader: Any, device: torch.device, precision: str, env: DistEnv = SINGLE_PROCESS
) -> tuple[Tensor, Tensor]:
    """The backbone's predicted classes (before the head) and the labels over a whole loader with the current
    prompt, gathered from all processes in the same order everywhere (label mapping needs the same answer on every
    process). Only the predictions are kept: a thousand-class backbone's logits take 4 kB an image, 400 MB for
    100,000 images, which each process would hold, all gathered."""
    model.eval()
    predictions, labels = [], []
    for images, y in loader:
        with autocast(device, precision):
            predictions.append(model.backbone(model.prompter(to_float_rgb(images, device))).float().argmax(dim=-1))
        labels.append(y.to(device))
    predicted, lab = torch.cat(predictions), torch.cat(labels)
    if env.enabled:
        predicted, lab = _all_gather_rows(predicted, env), _all_gather_rows(lab, env)
    return predicted, lab


def _all_gather_rows(t: Tensor, env: DistEnv) -> Tensor:
    import torch.distributed as dist

    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(env.world_size)]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


# --------------------------------------------------------------------------------------------------------------
# Run folder


class _RunLogHandler(logging.FileHandler):
    """Marks the handlers this module added, so a second run in the same process replaces them; counts the lines
    this attempt wrote."""

    lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.lines += 1


class _LineFormatter(logging.Formatter):
    """A log line with what UTF-8 cannot hold escaped (a file name that is not UTF-8, as ``os.listdir`` gives it with
    surrogates): a stream that encodes strictly would otherwise drop the line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")


def setup_logging(run_dir: Path | None, env: DistEnv) -> None:
    """Log to stderr (main process) and to ``run_dir/log.txt`` (appending, so a resumed run keeps its history)."""
    logger = logging.getLogger("vprompt")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        if isinstance(h, _RunLogHandler) or getattr(h, "_vprompt", False):
            logger.removeHandler(h)
            h.close()
    if not env.is_main:
        logger.setLevel(logging.WARNING)
        return

    def line(tag: str) -> logging.Formatter:
        return _LineFormatter(f"%(asctime)s {tag.replace('%', '%%')}%(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")

    stream = logging.StreamHandler()
    stream._vprompt = True  # type: ignore[attr-defined]
    stream.setFormatter(line(_console_tag))
    logger.addHandler(stream)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = _RunLogHandler(run_dir / "log.txt", encoding="utf-8")
        fh.setFormatter(line(""))
        logger.addHandler(fh)
    logger.propagate = False


# --------------------------------------------------------------------------------------------------------------
# A whole run


def _build_for_run(
    cfg: RunConfig,
    device: torch.device,
    augment: bool = True,
    weights_like: str | None = None,
    env: DistEnv = SINGLE_PROCESS,
    read: str = "all",
) -> tuple[PromptedModel, DataSplits, InputDiversity]:
    """Model, data and input diversity of a run (of this process, in ``env``); ``augment=False`` decodes training
    images without random crops, ``weights_like`` is passed to :func:`build_backbone`, ``read`` names the splits
    whose files are read (see :func:`~vprompt.data.prepare_data`).

    Seeded first, so that a randomly initialized backbone or prompt is the same in training and in evaluation."""
    check_dataset(cfg.dataset, cfg.dataset_options)  # a mistyped name is told before a model is downloaded
    kind = check_head(cfg, model_kind(cfg.model))  # and so is a head the model or the run cannot take
    check_sizes(cfg)  # and sizes that do not fit the model
    if read == "all" and not cfg.epochs and _test_split_only(cfg):
        if kind not in HEADS_WITHOUT_DATA:  # (the loader would ask for train/, where the head is what to change)
            raise ValueError(
                f"dataset {cfg.dataset} in {data_root(cfg.data_dir)} has no training split, and head {kind} is fitted "
                "on training images: --label-map identity or rlm evaluates a test split alone"
            )
        _log.info("dataset %s has no training split: the run is evaluated on its test split only", cfg.dataset)
        read = "test"
    torch.manual_seed(torch_seed(cfg.seed))
    backbone = build_backbone(cfg, device, weights_like)
    prompter = build_prompter(cfg, backbone)
    diversity = create_diversity(
        cfg.diversity, min_scale=cfg.di_min_scale, prob=cfg.di_prob, shard=(env.rank, env.world_size)
    )
    data = data_for_run(cfg, prompter.image_size, augment and diversity.random_crop, read)
    head = build_head(cfg, backbone, data.classnames, data.templates)
    return PromptedModel(prompter, backbone, head), data, diversity


def _not_finite(epoch: int, loss: float, cfg: RunConfig, model: PromptedModel) -> None:
    """A training loss that is NaN or infinite: an error (the epoch's prompt is not kept), or under fp16, whose
    gradient scaler skips the steps that overflowed, a warning. It names the rates of what trains and a weights
    file, whose NaN values give it too."""
    rates = [f"--lr {cfg.lr:g}"] if any(p.requires_grad for p in model.prompter.parameters()) else []
    if any(p.requires_grad for p in model.head.parameters()):
        rates.append(f"--head-lr {getattr(model.head, 'lr', cfg.head_lr)}")
    why = f"epoch {epoch}: the training loss is {loss}; lower {' or '.join(rates)}"
    weights = local_weights(cfg.model, cfg.pretrained)
    if weights is not None:
        why += f", or check the weights in {weights} (--pretrained): NaN or infinite values in them give this"
    if cfg.precision == "fp16":
        _log.warning("%s, or run without --precision fp16", why)
        return
    raise ValueError(f"{why}; the run stopped before saving epoch {epoch}")


def _load_saved(model: PromptedModel, state: dict[str, Tensor], path: Path) -> None:
    """Load the prompt and head a file saved with its settings, by which ``model`` was built: one that does not fit
    them was edited or damaged, and is named."""
    try:
        model.load_artifact_state(state)
    except StateMismatch as e:
        raise ValueError(
            f"{path} does not hold the prompt its own settings describe ({e.detail}): it was edited or damaged; use "
            "the run's own copy, or train the prompt again"
        ) from e


def _test_split_only(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s dataset has a test split and no training split (a user's folder may hold only test/)."""
    splits = get_dataset_spec(cfg.dataset).available_splits(data_root(cfg.data_dir), cfg.dataset_options)
    return "test" in splits and "train" not in splits


def data_for_run(cfg: RunConfig, image_size: int, random_crop: bool, read: str = "all") -> DataSplits:
    """The train / val / test splits ``cfg`` describes, decoded at ``image_size`` (``read``: see prepare_data)."""
    return prepare_data(
        cfg.dataset,
        cfg.data_dir,
        image_size=image_size,
        random_crop=random_crop,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        download=cfg.download,
        options=cfg.dataset_options,
        shots=cfg.shots,
        train_fraction=cfg.train_fraction,
        read=read,
    )


def _optimizers(
    cfg: RunConfig, model: PromptedModel, steps_per_epoch: int
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LambdaLR]]:
    """One optimizer for the prompt (the method's), and one for a trainable head if there is one."""
    optimizers: list[torch.optim.Optimizer] = []
    prompt_params = [p for p in model.prompter.parameters() if p.requires_grad]
    if prompt_params:
        masks = {getattr(model.prompter, k): m for k, m in model.prompter.grad_masks().items()}
        optimizers.append(
            create_optimizer(
                cfg.optimizer or "normgrad",
                prompt_params,
                lr=float(cfg.lr),
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                masks=masks,
            )
        )
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    if head_params:
        head_lr = getattr(model.head, "lr", 1e-3)
        optimizers.append(create_optimizer("adamw", head_params, lr=head_lr, weight_decay=cfg.weight_decay))
    total = steps_per_epoch * int(cfg.epochs or 0)
    # The run's schedule for every optimizer; its warmup (VP's 1000 steps) is the prompt's, not the head's, unless
    # the head is all there is to train.
    warmups = [int(cfg.warmup_steps or 0), 0]
    if cfg.schedule == "cosine" and optimizers and total and warmups[0] >= total:  # (VP's 1000 in a few-shot run)
        lr = f"--lr {cfg.lr:g}" if prompt_params else f"--head-lr {optimizers[0].defaults['lr']:g}"
        _log.warning(
            "--warmup-steps %d is as long as the run's %d steps (%d epoch%s of %d): its lr never reaches %s or "
            "anneals; give fewer warmup steps (a tenth of the steps, say)",
            warmups[0], total, int(cfg.epochs or 0), "" if cfg.epochs == 1 else "s", steps_per_epoch, lr,
        )  # fmt: skip
    schedulers = [
        create_scheduler(opt, cfg.schedule or "constant", total, steps_per_epoch, warmup)
        for opt, warmup in zip(optimizers, warmups)
    ]
    return optimizers, schedulers


def _use_threads(cfg: RunConfig) -> None:
    """PyTorch's CPU threads as ``--threads`` asks; unset, the process's own count (see :func:`_gives_back`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def _gives_back(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, after which PyTorch's CPU thread count and random state (the CPU's, and that of the GPUs in use
    before) are what they were before: a run's ``--threads`` is the run's, not the process's, and a run seeds the
    random state with its own seed, which the caller's next random numbers would otherwise repeat (the next run of
    a suite, a notebook's next cell)."""

    @functools.wraps(func)
    def giving_back(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=gpus):
                return func(*args, **kwargs)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    return giving_back


@contextlib.contextmanager
def _engine_settings(cfg: RunConfig) -> Iterator[None]:
    """The threads of :func:`_use_threads`, and for the run only, :func:`deterministic_kernels` where
    ``--deterministic`` asks for them."""
    _use_threads(cfg)
    with deterministic_kernels() if cfg.deterministic else contextlib.nullcontext():
        yield


def fix_cublas_workspace() -> None:
    """Give cuBLAS the fixed workspace with which its sums repeat (unless the environment chose one). PyTorch reads
    it at the process's first GPU matrix product: a process that will run ``--deterministic`` runs after others
    (a suite's grid) calls this before its first run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """GPU kernels that sum in the same order on every call, until the block ends (the previous settings are then
    restored): cuDNN's default ones may not, and EVP's normalized gradient, a step of fixed length, turns those last
    bits into prompts a pixel value apart within a few steps."""
    fix_cublas_workspace()
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    cudnn.deterministic, cudnn.benchmark = True, False
    # PyTorch's own kernels too (attention's backward among them); an op with no deterministic version fails, named
    torch.use_deterministic_algorithms(True)
    try:
        yield
    except RuntimeError as e:
        if "CUBLAS_WORKSPACE_CONFIG" not in str(e):
            raise
        # PyTorch reads the variable once, at the process's first cuBLAS call: here that came before this run set it
        raise ValueError(
            "--deterministic: this process used the GPU's matrix products before the run could set "
            "CUBLAS_WORKSPACE_CONFIG=:4096:8, which PyTorch reads only once; set it in the environment before Python "
            "starts (export CUBLAS_WORKSPACE_CONFIG=:4096:8), or start the run in a new process"
        ) from e
    finally:
        cudnn.deterministic, cudnn.benchmark = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


@_gives_back
def fit(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg`` end to end in its run folder and return the results (also written to ``results.json``)."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"fit takes a RunConfig, not a {type(cfg).__name__}: resolve_config({{...}}) makes one")
    cfg = copy.deepcopy(cfg)  # the run fills in the sizes left to its model: in its own copy, not the caller's
    check_output_folder(cfg.run_dir, "--output/--name")
    check_dataset(cfg.dataset, cfg.dataset_options)  # (a mistyped name is told, not the state of a folder of its name)
    with _engine_settings(cfg):
        if cfg.method == "linprobe":  # no prompt to train: logistic regression on cached features
            from .linprobe import run_linear_probe

            return run_linear_probe(cfg)
        env = init_distributed(cfg.device)
        with run_folder(cfg.run_dir, env):
            device = resolve_device(cfg.device, env)
            setup_logging(cfg.run_dir, env)  # first, so that nothing this run logs lands in another run's log.txt
            with on_device(device):
                return _fit(cfg, env, device)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """``device`` as the current GPU until the block ends: the one a loader pins its batches for, from whose
    thread PyTorch takes it. Else a run on ``cuda:1`` pins them for GPU 0, and takes memory there for a CUDA context."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def run_folder(run_dir: Path, env: DistEnv) -> Iterator[None]:
    """``run_dir`` for a run: locked (another process given it is refused, and removes nothing), and removed
    again when the run fails before it started (no config.yaml), with the folders above it that it made and that
    are still empty: no folder is left behind that looks like one. Its log.txt takes no more lines once it ends."""
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    with folder_lock(run_dir, env):
        try:
            yield
        except BaseException as e:
            if made and env.is_main and not (run_dir / "config.yaml").exists():
                setup_logging(None, env)
                shutil.rmtree(run_dir, ignore_errors=True)
                for folder in made[1:]:
                    with contextlib.suppress(OSError):  # (another run's folder there now: kept)
                        folder.rmdir()
            else:  # the console says it already; the run's log.txt tells whoever reads it later
                from .download import error_line

                interrupted = isinstance(e, KeyboardInterrupt)  # (SIGTERM is one too: sigterm_interrupts)
                _note_in_run_log(
                    run_dir,
                    "stopped: interrupted; what was written is kept (--resume latest continues)"
                    if interrupted
                    else f"stopped by an error: {error_line(e)}",
                )
            raise
        finally:  # what the process logs after the run (another evaluation, a notebook's next cell) is not the run's
            _close_run_log(run_dir)


def _run_log_handlers(run_dir: Path) -> list[_RunLogHandler]:
    """The handlers of the ``vprompt`` logger that write ``run_dir``'s log.txt."""
    log_file = os.path.abspath(run_dir / "log.txt")
    handlers = logging.getLogger("vprompt").handlers
    return [h for h in handlers if isinstance(h, _RunLogHandler) and h.baseFilename == log_file]


def _close_run_log(run_dir: Path) -> None:
    """Detach and close the handler that writes ``run_dir``'s log.txt; the console's stays."""
    for handler in _run_log_handlers(run_dir):
        logging.getLogger("vprompt").removeHandler(handler)
        handler.close()


def _note_in_run_log(run_dir: Path, message: str) -> None:
    """End this attempt's lines in ``run_dir``'s log.txt with ``message`` (a warning), not shown on the console;
    an attempt that wrote none there (refused before it began) leaves the file as it was."""
    logger = logging.getLogger("vprompt")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, (), None)
    for handler in _run_log_handlers(run_dir):
        if handler.lines:
            handler.handle(record)


def _fit(cfg: RunConfig, env: DistEnv, device: torch.device) -> dict[str, Any]:
    run_dir = cfg.run_dir
    resume_from = resume_path(cfg)
    epochs = int(cfg.epochs or 0)
    if epochs and cfg.batch_size % env.world_size:  # (evaluation batches need not be: each process reads its share)
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {env.world_size} processes")

    state: dict[str, Any] | None = None
    if resume_from is not None:
        own = resume_from.resolve() == (run_dir / LAST_FILE).resolve()  # (however the path was written)
        # Onto the CPU, as an uninterrupted run holds its optimizers' step counts: AdamW reads one on a GPU with
        # .item(), waiting for the device at every step (loading copies the rest to the parameters' device)
        state = load_state(resume_from, map_location="cpu", own=own)

    def refuse_changed() -> None:
        """Before the build, which takes a while (and may download), and after it: it fills in the sizes left to
        the model's default, which only then are compared."""
        if state is None:
            if cfg.resume == "latest":
                refuse_other_run(cfg)
            return
        diff = changed_settings(state.get("config", {}), cfg)
        if diff:
            raise ValueError(
                f"--resume {resume_from}: the run was started with other settings ({diff}); use the same settings "
                "or a new --name"
            )

    refuse_changed()
    model, data, diversity = _build_for_run(cfg, device, env=env)
    refuse_changed()
    if cfg.resume == "latest" and resume_from is None:
        _log.info("--resume latest: no %s yet, starting from scratch", run_dir / LAST_FILE)
    n_train = split_size(data.train)  # (no training split: a run evaluated on a test split only)
    if data.train is not None and n_train < env.world_size:  # a process with no image would have no map outputs
        raise ValueError(f"{n_train} training images for {env.world_size} processes: launch at most {n_train}")
    if epochs and not model.trainable_parameters():
        raise ValueError(
            f"--epochs {epochs}: method {cfg.method} with prompter {cfg.prompter} and head {cfg.head} has nothing to "
            "train; use --epochs 0 to evaluate it as is"
        )
    per_proc = cfg.batch_size // env.world_size or 1  # (0 only where nothing is trained: training refuses it above)
    eval_bs = (cfg.eval_batch_size or cfg.batch_size) // env.world_size or 1

    def loader(ds: Any, shuffle: bool, bs: int) -> Any:
        return make_loader(ds, bs, shuffle, cfg.seed, device, cfg.workers, env.rank, env.world_size)

    train_loader = loader(data.train, True, per_proc) if data.train is not None else None
    # Label maps count every training image once: in order, without the padding of a shuffled epoch.
    map_loader = train_loader.in_order() if train_loader is not None else None
    val_loader = loader(data.val, False, eval_bs) if data.val is not None else None
    optimizers, schedulers = _optimizers(cfg, model, split_size(train_loader))
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None

    start_epoch, best = 0, {"epoch": 0, "val_acc1": -math.inf}
    best_state: dict[str, Tensor] = {}  # the selected epoch's prompt, also kept in last.pt
    train_seconds, train_images = 0.0, 0
    last_val: dict[str, float] | None = None  # the validation metrics of the last epoch trained here
    identity = data_identity(data)  # (once: each epoch's last.pt and selected prompt record it)
    if state is not None:
        changes = data_changes(state.get("data"), identity)
        if changes:
            raise ValueError(
                f"--resume {resume_from}: the data changed since the run started ({changes}); resume on the same "
                "data, or start a new run (--name)"
            )
        # (a finished run redone trains no epoch: how often epochs are validated then changes nothing)
        done = int(state.get("epoch", 0)) >= epochs
        kept = [k for k in result_keys(cfg) if k != "data_dir" and not (done and k == "eval_every")]
        changes = changed_settings(state.get("config", {}), cfg, kept)
        if changes and env.is_main:
            _log.warning(
                "--resume %s: continued with other settings than the epochs before (%s): the results reflect both",
                resume_from, changes,
            )  # fmt: skip
        _load_saved(model, state["model"], resume_from)
        for opt, sd in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        for sched, sd in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(sd)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best = int(state["epoch"]), dict(state["best"])
        best_state = dict(state.get("best_model", {}))
        train_seconds, train_images = float(state.get("train_seconds", 0.0)), int(state.get("train_images", 0))
        _log.info("resumed from %s at epoch %d (best so far: epoch %d)", resume_from, start_epoch, best["epoch"])
    _check_same_start(start_epoch if resume_from is not None else -1, env, device)

    config = cfg.to_dict()
    metrics_path = run_dir / "metrics.jsonl"
    if env.is_main:
        # (a run redone from the start, having no last.pt, is resumed too: its results go before anything else)
        write_run_files(cfg, data, run_dir, model.backbone.input_size, from_state=resume_from is not None)
        source = resume_from.parent if resume_from is not None else run_dir
        rewind_run_files(run_dir, source, start_epoch, best, best_state, config, data)
        if resume_from is not None and source.resolve() != run_dir.resolve():
            # This folder's own state from the start: --resume latest here continues it even when no epoch is left
            atomic_write(run_dir / LAST_FILE, lambda tmp: shutil.copyfile(resume_from, tmp))
        _log.info(
            "run %s: %s on %s (%s), %s; %d train / %s val (%s) / %d test images; %d learnable prompt values; %s",
            run_dir, cfg.method, cfg.dataset, cfg.model, model.prompter.extra_repr(), n_train,
            split_size(data.val), data.val_source, len(data.test), model.prompter.num_values(),
            device,
        )  # fmt: skip

    for epoch in range(start_epoch, epochs):
        _seed_epoch(cfg.seed, epoch)
        train_loader.set_epoch(epoch)
        map_loader.set_epoch(epoch)  # the crops of decoded files that label mapping sees
        if model.head.epoch_start(epoch, lambda: collect_predictions(model, map_loader, device, cfg.precision, env)):
            _log.info("epoch %d: head updated", epoch + 1)
        lr = optimizers[0].param_groups[0]["lr"] if optimizers else 0.0  # this epoch's (its first step's)
        stats = train_one_epoch(
            model, train_loader, optimizers, schedulers, diversity, device, cfg.precision, scaler,
            epoch, cfg.log_every, env,
        )  # fmt: skip
        train_seconds += stats["seconds"]
        train_images += stats["images"]
        done = epoch + 1
        if not math.isfinite(stats["train_loss"]):
            _not_finite(done, stats["train_loss"], cfg, model)
        record: dict[str, Any] = {"epoch": done, "lr": lr}
        record.update({k: stats[k] for k in ("train_loss", "train_acc1", "images_per_s")})
        evaluate_now = val_loader is not None and (done % cfg.eval_every == 0 or done == epochs)
        if evaluate_now:
            val = last_val = evaluate(model, val_loader, device, cfg.precision, env, desc="val")
            record.update({f"val_{k}": v for k, v in val.items() if k != "n"})
        improved = (evaluate_now and record["val_acc1"] > best["val_acc1"]) or val_loader is None
        if improved:  # (with the epoch's validation metrics: the final report needs not evaluate them again)
            best = {"epoch": done, "val_acc1": record.get("val_acc1"), **({"val": val} if evaluate_now else {})}
            best_state = {k: v.detach().clone() for k, v in model.artifact_state().items()}
        if env.is_main:
            _log.info(
                "epoch %d/%d train loss %.4f acc %.2f%s (%.1f img/s)%s", done, epochs, stats["train_loss"],
                stats["train_acc1"], f" | val acc {record['val_acc1']:.2f}" if evaluate_now else "",
                stats["images_per_s"], " *best*" if improved and val_loader is not None else "",
            )  # fmt: skip
            if evaluate_now or val_loader is None:
                append_jsonl(metrics_path, record)
            # In this order: if the run stops before last.pt is written, resuming redoes this epoch and first
            # rewinds these two files to what last.pt records (rewind_run_files).
            if improved:
                meta = prompt_meta(data, done, best["val_acc1"], identity)
                save_prompt(run_dir / PROMPT_FILE, best_state, config, **meta)
            save_state(
                run_dir / LAST_FILE,
                {
                    "format": "vprompt-last/1",
                    "epoch": done,
                    "best": best,
                    "best_model": best_state,
                    "train_seconds": train_seconds,
                    "train_images": train_images,
                    "model": model.artifact_state(),
                    "optimizers": [o.state_dict() for o in optimizers],
                    "schedulers": [s.state_dict() for s in schedulers],
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "config": config,
                    "data": identity,
                },
            )
        barrier(env.world_size)

    if epochs == 0:  # no training epoch called it: a label map (FLM without a prompt) is computed here
        model.head.epoch_start(0, lambda: collect_predictions(model, map_loader, device, cfg.precision, env))
    return _finish(
        cfg, model, data, device, env, best, best_state, last_val, epochs, train_seconds, train_images, loader, eval_bs
    )


def _check_same_start(start: int, env: DistEnv, device: torch.device) -> None:
    """Refuse processes that would continue from different epochs (``start``: the resumed epoch, -1 for none):
    each reads last.pt from its own view of the run folder, which several machines must share."""
    if not env.enabled:
        return
    starts = torch.zeros(env.world_size, dtype=torch.long, device=device)
    starts[env.rank] = start
    starts = all_reduce_sum(starts, env.world_size).tolist()
    if len(set(starts)) > 1:
        found = ", ".join(
            f"process {r}: " + (f"epoch {e}" if e >= 0 else f"no {LAST_FILE}") for r, e in enumerate(starts)
        )
        raise ValueError(
            f"--resume: the processes would continue from different points ({found}); every process reads {LAST_FILE} "
            "from the run folder, so put --output on a filesystem all machines share, or copy the run folder to each"
        )


def _finish(
    cfg: RunConfig,
    model: PromptedModel,
    data: DataSplits,
    device: torch.device,
    env: DistEnv,
    best: dict[str, Any],
    best_state: dict[str, Tensor],
    last_val: dict[str, float] | None,
    epochs: int,
    train_seconds: float,
    train_images: int,
    loader: Callable[..., Any],
    eval_bs: int,
) -> dict[str, Any]:
    """Test the last and the selected prompt, write ``results.json``. ``last_val``: the last epoch's validation metrics
    where this process trained it (the selected epoch's are in ``best``); what is not known is evaluated."""
    run_dir = cfg.run_dir
    config = cfg.to_dict()
    test_loader = loader(data.test, False, eval_bs)
    val_loader = loader(data.val, False, eval_bs) if data.val is not None else None
    last_test = evaluate(model, test_loader, device, cfg.precision, env, desc="test (last)")
    if last_val is None and best["epoch"] == epochs:  # (a finished run redone: its state holds them)
        last_val = best.get("val")
    if last_val is None and val_loader is not None:
        last_val = evaluate(model, val_loader, device, cfg.precision, env, desc="val (last)")
    if epochs == 0 and env.is_main:
        best = {"epoch": 0, "val_acc1": last_val["acc1"] if last_val else None}
        save_prompt(run_dir / PROMPT_FILE, model.artifact_state(), config, **prompt_meta(data, 0, best["val_acc1"]))
    barrier(env.world_size)
    if best["epoch"] == epochs:
        best_test, best_val = last_test, last_val
    else:  # every process holds the selected prompt (a run over several machines shares no files)
        state = best_state or load_prompt(run_dir / PROMPT_FILE)[0]
        model.load_artifact_state({k: v.to(device) for k, v in state.items()})
        best_test = evaluate(model, test_loader, device, cfg.precision, env, desc="test (best)")
        best_val = best.get("val")
        if best_val is None and val_loader is not None:  # (a state saved without them)
            best_val = evaluate(model, val_loader, device, cfg.precision, env, desc="val (best)")
    results = {
        **cfg.identity(),
        "head": resolve_head(cfg.head, cfg.label_map, model_kind(cfg.model)),  # (what the baselines differ by)
        "n_train": split_size(data.train),
        "epochs": epochs,
        # (a run of no epochs has one prompt: nothing is selected, and validation only reported)
        "selection": ("val" if data.val is not None else "last") if epochs else "none",
        "best_epoch": best["epoch"],
        "val": best_val,
        "test": best_test,
        "val_last": last_val,
        "test_last": last_test,
        "train_seconds": train_seconds,
        "train_images_per_s": train_images / train_seconds if train_seconds else None,
    }
    if env.is_main:
        write_results(run_dir, results)
        val_acc = f", val acc {best_val['acc1']:.2f}" if best_val else ""
        if epochs:
            how = "selected on val" if results["selection"] == "val" else "the last, no validation split"
            _log.info(
                "done: test acc %.2f at epoch %d (%s%s); last epoch test acc %.2f",
                best_test["acc1"], best["epoch"], how, val_acc, last_test["acc1"],
            )  # fmt: skip
        else:
            _log.info("done: test acc %.2f%s (no epochs: nothing selected)", best_test["acc1"], val_acc)
    return results


# --------------------------------------------------------------------------------------------------------------
# Evaluate-only


def _relative_path_missing(value: Any, tags: bool) -> bool:
    """Whether ``value`` is a relative path that does not exist from here (with ``tags``, a value without a folder
    in it is a weights tag such as ``openai``, not a path, unless it is named like a weights file, ``w.pth``; ``~``
    is the home folder, as where the run read it)."""
    if not isinstance(value, str) or Path(value).expanduser().is_absolute() or Path(value).exists():
        return False
    named_as_file = Path(value).suffix.lower() in WEIGHTS_SUFFIXES
    return not tags or value.startswith(".") or "/" in value or os.sep in value or named_as_file


@_gives_back
def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    data_dir: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    pretrained: str | None = None,
    workers: int = 4,
    threads: int | None = None,
    shift: Sequence[str] | None = None,
    shift_severities: Sequence[int] | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Evaluate a saved prompt (``prompt.safetensors`` or its run folder) on ``split`` (train, val or test).

    The run's own config rebuilds the backbone, data and validation split; ``data_dir`` and ``pretrained`` can
    point to where those files are on this machine.

    With ``shift`` (a list of shift-set names or globs; empty for the default sets), the prompt is also evaluated
    on the dataset's distribution-shift sets (:mod:`vprompt.data.shift`, e.g. CIFAR-10-C for cifar10, the OOD
    splits for the WILDS datasets), filtered by ``shift_severities``; the result then has ``shift`` (name ->
    accuracy) and ``shift_summary`` (per group: mean over corruptions per severity and overall, or over the
    shifted splits with the in-distribution mean and the gap beside it). ``download`` fetches
    missing data (the dataset's and the shift sets'); only the files of ``split`` are read.
    """
    from .checkpoint import find_checkpoint
    from .linprobe import PROBE_FILE

    given = Path(checkpoint)
    if given.name == PROBE_FILE or ((given / PROBE_FILE).is_file() and not (given / PROMPT_FILE).is_file()):
        raise ValueError(
            f"{checkpoint} is a linear probe: vprompt eval evaluates prompts; the probe's test accuracy (L2 strength "
            "selected on validation) is in its run folder's results.json"
        )
    path = find_checkpoint(checkpoint)
    state, config, meta = load_prompt(path)
    # (a finished run redone, results.json set aside in PREVIOUS_RESULTS, has trained no further: its prompt is final)
    finished = any((path.parent / name).is_file() for name in ("results.json", PREVIOUS_RESULTS))
    unfinished = (path.parent / "config.yaml").is_file() and not finished
    if unfinished:  # in a run folder that has not finished: an intermediate prompt, not the run's result
        _log.warning(
            "%s has not finished (no results.json): this is the prompt selected up to epoch %s of %s; the run is "
            "still going, or continues with --resume latest", path.parent, meta.get("epoch"), config.get("epochs"),
        )  # fmt: skip
    flags = {
        "device": device, "data_dir": data_dir, "pretrained": pretrained, "batch_size": batch_size,
        "eval_batch_size": batch_size, "precision": precision, "workers": workers, "threads": threads,
    }  # fmt: skip
    flags = {k: v for k, v in flags.items() if v is not None}
    # this machine's device and threads, not the training machine's; downloads only when asked for here
    values = {**with_filled_recorded(config), **dict.fromkeys(INVOCATION_KEYS), "download": download}
    values |= flags
    trained_with = kept_pretrained(config.get("pretrained"), config.get("model"))
    if pretrained is not None and not same_weights(trained_with, kept_pretrained(pretrained, config.get("model"))):
        _log.warning(
            "--pretrained %s: the run was trained with %s, to whose outputs its prompt and head were fitted; unless "
            "these are the same weights under another name, it evaluates them on other weights", pretrained,
            "random weights" if trained_with is None else repr(trained_with),
        )  # fmt: skip
    for key in ("pretrained", "data_dir"):
        saved = values.get(key)
        if (
            key not in flags
            and _relative_path_missing(saved, tags=key == "pretrained")
            and not (key == "data_dir" and (download or not get_dataset_spec(config.get("dataset")).reads_files))
        ):
            raise FileNotFoundError(
                f"{path}: the run's {key} {saved!r} is relative to the folder it was trained from and is not found "
                f"from {Path.cwd()}; pass --{key.replace('_', '-')} with where it is"
            )
    cfg = resolve_config(values, str(path), dict.fromkeys(flags, "command line"), check_unused=False)
    _use_threads(cfg)
    env = DistEnv()
    dev = resolve_device(cfg.device, env)
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split {split!r}: choose from train, val, test")
    if shift is not None:  # (before the model and the data are read)
        from .data.shift import check_has_shifts

        check_has_shifts(cfg.dataset)
    if split != "test" and _test_split_only(cfg):  # (the loader would ask for train/)
        raise ValueError(
            f"--split {split}: dataset {cfg.dataset} in {data_root(cfg.data_dir)} has no training split, which the "
            f"{split} split comes from; use --split test"
        )
    # weights given as a file here keep the activation and normalization of the tag the prompt was trained with
    model, data, _ = _build_for_run(
        cfg, dev, augment=False, weights_like=config.get("pretrained"), read="test" if split == "test" else "train"
    )
    if "classnames" in meta and list(meta["classnames"]) != list(data.classnames):
        how = "are in another order than" if sorted(meta["classnames"]) == sorted(data.classnames) else "differ from"
        raise ValueError(
            f"{path}: the dataset's classes {how} those the prompt was trained on (its head maps by position); "
            "train the prompt again on this dataset"
        )
    changes = split_changes(meta.get("data"), data_identity(data), split) if split != "test" else ""
    if changes:  # other images held out or drawn: not the run's own split, and perhaps its training images
        raise ValueError(
            f"--split {split}: the data differ from those {path} was trained on ({changes}), so this would not be the "
            f"run's {split} split; evaluate on the data it was trained on (--data-dir), or use --split test"
        )
    try:
        _load_saved(model, {k: v.to(dev) for k, v in state.items()}, path)
    except ValueError as e:  # weights given here, of other classes or sizes: theirs to name, not the file's
        if pretrained is None or not isinstance(e.__cause__, StateMismatch):
            raise
        raise ValueError(
            f"--pretrained {pretrained}: the prompt and head of {path} do not fit model {cfg.model} with these weights "
            f"({e.__cause__.detail}); give the weights the run was trained with, or leave --pretrained out"
        ) from None
    if split not in data.parts:
        raise ValueError(f"--split val: this run has no validation split (val_fraction {cfg.val_fraction})")
    shift_sets = None
    if shift is not None:  # found before any evaluation, so missing files fail fast
        from .data.shift import find_shift_sets, split_kind, summarize_shift

        shift_sets = find_shift_sets(
            cfg.dataset, cfg.data_dir, shift, shift_severities, model.prompter.image_size, data.classnames,
            download, cfg.dataset_options,
        )  # fmt: skip
    bs = cfg.eval_batch_size or cfg.batch_size
    loader = make_loader(data.parts[split], bs, False, cfg.seed, dev, cfg.workers)
    result = evaluate(model, loader, dev, cfg.precision, env, desc=split)
    out = {"checkpoint": str(path), "split": split, "dataset": cfg.dataset, "epoch": meta.get("epoch"), **result}
    if unfinished:
        out["unfinished"] = True
    if shift_sets is not None:
        out["split_kind"] = split_kind(cfg.dataset, split, cfg.dataset_options)
        out["shift"] = {}
        for s in shift_sets:
            if s.split == split:  # (WILDS' ood_test is the test split just evaluated)
                out["shift"][s.name] = result
            else:
                shifted = make_loader(s.build(), bs, False, cfg.seed, dev, cfg.workers)
                out["shift"][s.name] = evaluate(model, shifted, dev, cfg.precision, env, desc=s.name)
            _log.info("%s: acc %.2f", s.name, out["shift"][s.name]["acc1"])
        out["shift_summary"] = summarize_shift(shift_sets, out["shift"])
    return out
