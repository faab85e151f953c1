"""``vprompt demo``: reprogram a frozen, pretrained CIFAR-10 ResNet to read handwritten digits.

The real experiment that runs offline: the CIFAR-10 ResNet-20 checkpoint and real MNIST digits (IDX files) are
read from ``--data-dir`` (by default ``../shared/data`` when it exists), or downloaded when online. The prompt is
trained on the 10,000 ``train10k`` digits (the official 60,000 when present) minus a held-out validation split
that selects the epoch, and tested on all 10,000 official test digits.

Every arm has the same budget (epochs, batch size, canvas), and every prompted arm the same label mapping:

===============  ================================================================================
identity         no prompt; digit ``d`` is read as CIFAR class ``d``
flm              no prompt; the frequency label map (one-to-one, greedy) from the training digits
vp               VP: a border added on top of the resized digit, SGD with momentum, warmup, cosine
evp-plain        EVP's geometry (shrink, pad, border prompt) with SGD and momentum, no input diversity
evp-diversity    + input diversity
evp-normgrad     + normalized gradient (no diversity)
evp              EVP: both
evp-adamw        EVP's geometry with AdamW in place of the normalized gradient and VP's warmup and cosine,
                 no diversity (only with ``adamw_lr``; the benchmark's strongest EVP variant)
===============  ================================================================================

The arms run through :mod:`vprompt.suite` (one dataset, one seed), so a second ``vprompt demo`` skips finished
arms and resumes an interrupted one. Outputs in ``--output``: ``results.md`` (the table and the settings),
``curves.png`` (validation accuracy per epoch), ``prompt_<arm>.png`` (each learned prompt, and a prompted
digit), and the run folders under ``runs/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoSettings", "demo_arms", "run_demo", "default_data_dir", "default_jobs", "default_threads", "train_size"]

_log = logging.getLogger("vprompt")

ARM_DOCS = {
    "identity": "no prompt, identity map (digit d read as CIFAR class d)",
    "flm": "no prompt, frequency label map",
    "vp": "VP padding: border added on top of the image, SGD + momentum",
    "evp-plain": "EVP geometry, SGD + momentum, no input diversity",
    "evp-diversity": "EVP geometry + input diversity, SGD + momentum",
    "evp-normgrad": "EVP geometry + normalized gradient, no diversity",
    "evp": "EVP: input diversity + normalized gradient",
    "evp-adamw": "EVP geometry + AdamW, no diversity",
}


#: The input diversities and label maps the demo's arms take (its EVP arms differ in whether they use diversity).
DEMO_DIVERSITIES = ("ref", "di")
DEMO_LABEL_MAPS = ("flm", "ilm")


@dataclass
class DemoSettings:
    """The demo's budget and geometry; the defaults finish in about 9 minutes on two CPU cores.

    The defaults come from the validation runs of ``benchmarks/reprogram_mnist.py`` (BENCHMARKS.md): batch 32
    (more steps per epoch gave VP and EVP about 3 points more at equal epochs, and trains faster on one CPU
    thread), ``di`` diversity (DI-FGSM's resize-and-pad: a flipped digit is not the same digit), and the
    plain-SGD learning rate selected at batch 128 scaled linearly to batch 32.

    Attributes:
        depth: CIFAR ResNet depth (20, 32, 44, 56).
        epochs: epochs of every trained arm.
        batch_size: batch size of every trained arm.
        input_size: canvas size S the ResNet sees.
        inner_size: s, the size EVP shrinks the digit to (the border is (S - s) / 2 wide; VP's border too).
        label_map: mapping of every prompted arm (``flm`` or ``ilm``).
        diversity: the input-diversity variant of the EVP arms that use it.
        normgrad_lr: learning rate of the normalized-gradient arms.
        sgd_lr: learning rate of the plain-SGD EVP arms (momentum 0.9).
        vp_lr: VP's learning rate (SGD, momentum 0.9, warmup then cosine).
        adamw_lr: learning rate of an extra ``evp-adamw`` arm (masked AdamW, no weight decay, no diversity,
            VP's schedule: warmup over the first tenth of the steps, then cosine); None: no such arm.
        seed: training seed.
        precision: autocast precision of every arm (``fp32``, ``bf16``, ``fp16``). ``bf16`` about halves the time
            of a ResNet-20 arm on a CPU with bf16 instructions (BENCHMARKS.md 1m); without them it is slower.
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        threads: CPU threads per arm; None: one when running on the CPU.
        jobs: arms trained at a time, each in its own process; None: one per CPU core on the CPU (at most five,
            the trained arms without ``adamw_lr``), one on a GPU. A ResNet-20 on 32-pixel inputs is made of small
            operations: on two cores, two single-threaded arms side by side train more images per second than one
            arm on two threads, and a two-thread arm loses 40 % of its speed when anything else takes a core
            (BENCHMARKS.md).
    """

    depth: int = 20
    epochs: int = 3
    batch_size: int = 32
    input_size: int = 32
    inner_size: int = 24
    label_map: str = "ilm"
    diversity: str = "di"
    normgrad_lr: float = 10.0
    sgd_lr: float = 0.5
    vp_lr: float = 40.0
    adamw_lr: float | None = None
    seed: int = 42
    precision: str = "fp32"
    device: str | None = None
    threads: int | None = None
    jobs: int | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--threads", self.threads),
                            ("--jobs", self.jobs), ("--input-size", self.input_size),
                            ("--inner-size", self.inner_size)):  # fmt: skip
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{flag} {value!r} must be a whole number, at least 1")
        for flag, lr in (("--normgrad-lr", self.normgrad_lr), ("--sgd-lr", self.sgd_lr), ("--vp-lr", self.vp_lr),
                         ("--adamw-lr", self.adamw_lr)):  # fmt: skip
            number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
            if lr is not None and not (number and math.isfinite(lr) and lr > 0):
                raise ValueError(f"{flag} {lr!r} must be a positive finite number")
        for flag, value, known in (("--diversity", self.diversity, DEMO_DIVERSITIES),
                                   ("--label-map", self.label_map, DEMO_LABEL_MAPS)):  # fmt: skip
            if value not in known:
                raise ValueError(f"{flag} {value!r} must be one of {', '.join(known)}")
        border = self.input_size - self.inner_size
        if border < 2 or border % 2:  # (the sizes are at least 1, above)
            raise ValueError(
                f"--inner-size {self.inner_size} must be positive and smaller than --input-size {self.input_size} by "
                "an even number: EVP's prompt is the border around the shrunk digit, as wide on every side"
            )


def default_data_dir() -> Path | None:
    """``../shared/data`` (from the working directory) when it holds ``mnist/``, for offline use; else None."""
    candidate = Path("..") / "shared" / "data"
    return candidate if (candidate / "mnist").is_dir() else None


def _sources(data_dir: str | Path | None) -> tuple[str, str | None]:
    """(ResNet --pretrained, MNIST --data-dir) for a data folder; None: the caches, downloading what is missing."""
    if data_dir is None:
        return "cifar10", None
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data-dir {root} does not exist: give the folder that holds cifar10_resnets/ and mnist/, or leave the "
            "flag out to download them"
        )
    ckpt = root / "cifar10_resnets"
    mnist = root / "mnist"
    if not ckpt.is_dir():
        _log.warning("--data-dir %s has no cifar10_resnets folder: the ResNet weights are downloaded (or cached)", root)
    if not mnist.is_dir():
        _log.info("--data-dir %s has no mnist folder: MNIST's IDX files are read from %s itself", root, root)
    return (str(ckpt) if ckpt.is_dir() else "cifar10"), str(mnist if mnist.is_dir() else root)


def demo_arms(s: DemoSettings, warmup_steps: int) -> list[dict[str, Any]]:
    """The suite method entries of the demo, in table order (``warmup_steps``: VP's warmup)."""
    evp = {"name": "evp", "epochs": s.epochs, "input_size": s.input_size, "inner_size": s.inner_size,
           "label_map": s.label_map}  # fmt: skip
    sgd = {"optimizer": "sgd", "lr": s.sgd_lr, "momentum": 0.9, "schedule": "cosine_epoch"}
    norm = {"optimizer": "normgrad", "lr": s.normgrad_lr}
    arms = [
        {"name": "zeroshot", "label": "identity", "label_map": "identity", "input_size": s.input_size},
        {"name": "zeroshot", "label": "flm", "label_map": "flm", "input_size": s.input_size},
        {
            "name": "vp",
            "label": "vp",
            "epochs": s.epochs,
            "input_size": s.input_size,
            "prompt_size": (s.input_size - s.inner_size) // 2,
            "label_map": s.label_map,
            "lr": s.vp_lr,
            "warmup_steps": warmup_steps,
        },
        {**evp, "label": "evp-plain", "diversity": "none", **sgd},
        {**evp, "label": "evp-diversity", "diversity": s.diversity, **sgd},
        {**evp, "label": "evp-normgrad", "diversity": "none", **norm},
        {**evp, "label": "evp", "diversity": s.diversity, **norm},
    ]
    if s.adamw_lr is not None:
        adamw = {"optimizer": "adamw", "lr": s.adamw_lr, "schedule": "cosine", "warmup_steps": warmup_steps}
        arms.append({**evp, "label": "evp-adamw", "diversity": "none", **adamw})
    return arms


def _suite(s: DemoSettings, sources: tuple[str, str | None], output: Path) -> Any:
    from .suite import parse_suite

    pretrained, mnist_dir = sources
    base = {
        "model": f"cifar:resnet{s.depth}",
        "pretrained": pretrained,
        "data_dir": mnist_dir,
        "batch_size": s.batch_size,
        "device": s.device,
        "precision": s.precision,
        "threads": s.threads if s.threads is not None else default_threads(s.device),
        "log_every": 0,
        "workers": 0,
    }
    base = {k: v for k, v in base.items() if v is not None}
    # VP's 1000 warmup steps would outlast a short run: it warms up over the first tenth of its steps instead.
    steps = s.epochs * -(-train_size(mnist_dir) // s.batch_size)
    arms = demo_arms(s, warmup_steps=max(1, steps // 10))
    data = {
        "base": base,
        "datasets": ["mnist"],
        "methods": arms,
        "seeds": [s.seed],
        "table": {"name": "suite_results", "title": "Reprogramming a CIFAR-10 ResNet to MNIST"},
    }
    return parse_suite(data, source="vprompt demo", default_output=str(output / "runs"))


def _on_cpu(device: str | None) -> bool:
    import torch

    return device == "cpu" or (device is None and not torch.cuda.is_available())


def default_threads(device: str | None) -> int | None:
    """Threads per run: one on the CPU (see :class:`DemoSettings`), PyTorch's default otherwise."""
    return 1 if _on_cpu(device) else None


def default_jobs(device: str | None) -> int:
    """Runs at a time: one per core on the CPU (at most the five trained arms), one on a GPU."""
    from .distributed import usable_cpus

    return min(5, usable_cpus()) if _on_cpu(device) else 1


def train_size(mnist_dir: str | None) -> int:
    """Training images after the validation holdout (for VP's warmup length); downloads MNIST when missing."""
    from .config import RunConfig
    from .data import create_dataset, holdout_split

    train = create_dataset("mnist", mnist_dir, "train", download=True)
    return len(holdout_split(train.targets, RunConfig.val_fraction, RunConfig.split_seed)[0])


def _with_data_hint(message: str) -> str:
    """``message`` of a failure to find or fetch files, told how the demo's own flag provides them. An arm's message
    names the settings as a suite's file does (``pretrained PATH``, ``data_dir``), the demo's data as flags."""
    if not re.search(r"(?<![\w-])(--)?(pretrained|data[-_]dir)\b", message):
        return message
    depth = " (and --depth N for --model cifar:resnetN)" if re.search(r"(?<![\w-])(--)?model cifar:", message) else ""
    return (
        f"{message}; for the demo, both come from its own --data-dir DIR (the ResNets in DIR/cifar10_resnets, MNIST "
        f"in DIR/mnist), in place of the weights and data settings named above{depth}"
    )


def run_demo(
    data_dir: str | Path | None = None,
    output: str | Path = "demo_out",
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run (or complete) the demo and write its report; returns ``{arm: results.json contents}``."""
    from .checkpoint import check_output_folder
    from .distributed import DistEnv
    from .engine import resolve_device
    from .runs import folder_lock

    s = settings or DemoSettings()
    output = Path(output).expanduser()
    check_output_folder(output, "--output")
    if s.device is not None:
        resolve_device(s.device)  # told once, not by every arm
    sources = _sources(data_dir)  # (its own --data-dir: an error about it needs no hint)
    # One demo per folder: a second one would take arms from the first, and each would find the other's locks.
    with folder_lock(output, DistEnv(), "demo folder", "give this demo another --output"):
        return _demo(s, data_dir, sources, output)


def _demo(
    s: DemoSettings, data_dir: str | Path | None, sources: tuple[str, str | None], output: Path
) -> dict[str, Any]:
    from .runs import CONFLICT, read_results
    from .suite import run_suite

    try:
        suite = _suite(s, sources, output)  # reads (or downloads) MNIST to size VP's warmup
    except FileNotFoundError as e:
        raise FileNotFoundError(_with_data_hint(str(e))) from e
    jobs = s.jobs if s.jobs is not None else default_jobs(s.device)
    report = run_suite(suite, output=output / "runs", quiet=True, jobs=jobs)
    if report.failed:  # a one-line error; each arm's log.txt has the details
        first = report.failed[0]
        hint = " (another --output starts a fresh demo)" if CONFLICT in first.error else ""
        raise ValueError(_with_data_hint(f"demo arm {first.method} failed: {first.error}{hint}"))
    results = {r.method: read_results(Path(r.run_dir)) for r in report.records}
    run_dirs = {r.method: Path(r.run_dir) for r in report.records}
    table = _table(results)
    _write_report(output, table, s, data_dir, results)
    _plot_curves(output, run_dirs, results)
    _save_prompt_images(output, run_dirs, suite.base.get("data_dir"))  # this demo's digits, wherever it runs
    print(table)
    print(f"report: {output / 'results.md'}")
    return results


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| arm | what | val acc | test acc | test acc, last epoch | epoch | train s |",
        "|:--|:--|--:|--:|--:|--:|--:|",
    ]
    for arm, r in results.items():
        val = f"{r['val']['acc1']:.2f}" if r.get("val") else "–"
        last = f"{r['test_last']['acc1']:.2f}" if r.get("epochs") else "–"
        epoch = str(r["best_epoch"]) if r.get("epochs") else "–"
        secs = f"{r['train_seconds']:.0f}" if r.get("epochs") else "–"
        lines.append(
            f"| {arm} | {ARM_DOCS.get(arm, '')} | {val} | {r['test']['acc1']:.2f} | {last} | {epoch} | {secs} |"
        )
    return "\n".join(lines) + "\n"


def _write_report(
    output: Path, table: str, s: DemoSettings, data_dir: str | Path | None, results: dict[str, dict[str, Any]]
) -> None:
    from .checkpoint import atomic_write

    settings = ", ".join(f"{k}={v}" for k, v in vars(s).items() if v is not None)
    arms = list(results)
    r = next(iter(results.values()))
    n_val = r["val"]["n"] if r.get("val") else 0
    text = (
        "# vprompt demo: a frozen CIFAR-10 ResNet reads handwritten digits\n\n"
        f"Frozen `cifar:resnet{s.depth}` (CIFAR-10 weights), MNIST digits on a {s.input_size}-pixel canvas; "
        f"trained on {r['n_train']:,} training digits, {n_val:,} more held out for validation (which selects the "
        f"epoch), tested on {r['test']['n']:,} MNIST test digits. Same budget for every arm.\n\n"
        f"{table}\n"
        f"Settings: {settings}; data: {data_dir or 'downloaded'}.\n\n"
        "![validation accuracy per epoch](curves.png)\n\n"
        "Learned prompts: " + ", ".join(f"[{a}](prompt_{a}.png)" for a in arms if a not in ("identity", "flm")) + "\n"
    )
    atomic_write(output / "results.md", lambda tmp: Path(tmp).write_text(text))


def _plot_curves(output: Path, run_dirs: dict[str, Path], results: dict[str, dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        _log.warning("matplotlib is not installed: no curves.png (pip install 'vprompt[plot]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, run_dir in run_dirs.items():
        metrics = run_dir / "metrics.jsonl"
        try:
            rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
        except ValueError as e:  # (edited, damaged: the table holds the arm's results; only its curve is lost)
            _log.warning("%s is damaged (%s): the curve of arm %s is left out of curves.png", metrics, e, arm)
            rows = []
        rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("val_acc1"), (int, float))]
        if rows:
            ax.plot([r["epoch"] for r in rows], [r["val_acc1"] for r in rows], marker="o", label=arm)
        elif results[arm].get("val"):
            ax.axhline(results[arm]["val"]["acc1"], linestyle="--", color="gray", linewidth=1)
            ax.annotate(arm, (1, results[arm]["val"]["acc1"]), fontsize=8, color="gray")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # (not 1.5 epochs in a short run)
    if max(ax.get_xlim()) < 2:  # one epoch: a single point, which the locator ticks at 0.95, 1.0, ...
        ax.set_xticks([1])
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Reprogramming a frozen CIFAR-10 ResNet to MNIST")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = output / ".curves.png.tmp"
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, output / "curves.png")


def _save_prompt_images(output: Path, run_dirs: dict[str, Path], mnist_dir: str | None) -> None:
    """``prompt_<arm>.png``: what the prompt adds to a black image, min-max scaled to be visible (where it adds
    nothing, as in EVP's centre, shows as the grey of zero), beside a prompted test digit (the first of
    ``mnist_dir``'s)."""
    import numpy as np
    import torch
    from PIL import Image

    from .backbones import IMAGENET_STD
    from .checkpoint import load_prompt
    from .data import create_dataset
    from .prompters import create_prompter

    digit = None
    for arm, run_dir in run_dirs.items():
        if arm in ("identity", "flm"):
            continue
        try:
            state, cfg, _ = load_prompt(run_dir / "prompt.safetensors")
        except (OSError, ValueError) as e:  # (its own advice, another file, is no demo's)
            raise ValueError(
                f"demo arm {arm}: {str(e).split('; ')[0]}; delete {run_dir} and run the demo again to train the arm "
                "again"
            ) from e
        if digit is None:
            test = create_dataset("mnist", mnist_dir, "test", download=False)
            digit = test[0][0].float().div(255).expand(3, -1, -1)[None]
        prompter = create_prompter(
            cfg["prompter"], cfg["input_size"], cfg["inner_size"], cfg["prompt_size"], scale=IMAGENET_STD
        )
        prompter.load_state_dict({k[len("prompter.") :]: v for k, v in state.items() if k.startswith("prompter.")})
        prompter.eval()
        with torch.no_grad():
            alone = prompter.prompt_pixels()
            prompted = prompter(digit)[0]
        alone = (alone - alone.min()) / (alone.max() - alone.min() + 1e-12)
        panel = torch.cat([alone, torch.ones(3, alone.shape[1], 2), prompted.clamp(0, 1)], dim=2)
        img = Image.fromarray((panel.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        img = img.resize((img.width * 8, img.height * 8), Image.NEAREST)
        tmp = output / f".prompt_{arm}.png.tmp"
        img.save(tmp, format="PNG")
        os.replace(tmp, output / f"prompt_{arm}.png")
