"""Accuracy benchmark: reprogram a frozen CIFAR-10 ResNet to MNIST, at larger budgets than ``vprompt demo``.

Two stages; the second uses what the first selected on the *validation* split (test digits are only reported):

1. Sweep at ``--sweep-epochs``: EVP's learning rate (normalized gradient) with each input-diversity variant
   (``di``, ``ref``), VP's learning rate, and plain SGD's learning rate for the EVP ablations.
2. The demo's arms (no prompt with the identity / FLM map, VP, EVP without diversity and normalization, with
   each, with both), and EVP with AdamW and VP's warmup schedule (``evp-adamw``, ``--adamw-lr``, BENCHMARKS.md 1e
   and 1j), at ``--epochs`` for each ``--depths``, with the selected settings, through
   :func:`vprompt.demo.run_demo`.

Both stages run through :mod:`vprompt.suite`, ``--jobs`` runs at a time, so an interrupted benchmark continues
where it stopped. Results: ``sweep/suite_results.csv``, ``chosen.json``, ``final-resnet<depth>/results.md`` and
``summary.md`` in ``--output``.

    python benchmarks/reprogram_mnist.py --data-dir ../shared/data --output bench_out/mnist --jobs 2
    python benchmarks/reprogram_mnist.py --chosen chosen.json --output bench_out/mnist48   # skip stage 1
    python benchmarks/reprogram_mnist.py --chosen benchmarks/chosen_mnist48.json --device cuda --epochs 200 --jobs 6

``benchmarks/chosen_mnist48.json`` holds the settings BENCHMARKS.md 1b-1j selected on validation.

The defaults (canvas 48 with the digit at 32 px, batch 32, 10 epochs) are those of the best validation runs
recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vprompt.checkpoint import check_output_folder
from vprompt.cifar_resnet import CIFAR_RESNET_DEPTHS
from vprompt.config import PRECISIONS
from vprompt.demo import DemoSettings, default_jobs, default_threads, run_demo, train_size
from vprompt.engine import resolve_device
from vprompt.errors import INTERRUPTED_EXIT, USER_ERRORS, print_user_error, user_message
from vprompt.suite import parse_suite, run_suite

EVP_LRS = (3.0, 10.0, 30.0)
DIVERSITY = ("di", "ref")
VP_LRS = (4.0, 40.0)
SGD_LRS = (0.5, 2.0, 8.0)
ADAMW_LR = 0.3  # evp-adamw, selected on validation in BENCHMARKS.md 1e and 1j (not swept here)
CHOSEN_KEYS = ("input_size", "inner_size", "diversity", "normgrad_lr", "vp_lr", "sgd_lr")  # what stage 2 takes


def sweep(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Stage 1; returns the settings selected by validation accuracy."""
    geo = {"input_size": args.input_size, "inner_size": args.inner_size}
    border = (args.input_size - args.inner_size) // 2
    root = Path(args.data_dir)
    steps = args.sweep_epochs * -(-train_size(str(root / "mnist")) // args.batch_size)
    methods = [
        {"name": "evp", "label": f"evp-{div}-lr{lr:g}", "diversity": div, "lr": lr, **geo}
        for div in DIVERSITY
        for lr in EVP_LRS
    ]
    methods += [
        {
            "name": "vp",
            "label": f"vp-lr{lr:g}",
            "lr": lr,
            "input_size": args.input_size,
            "prompt_size": border,
            "warmup_steps": max(1, steps // 10),
        }  # fmt: skip
        for lr in VP_LRS
    ]
    methods += [
        {
            "name": "evp",
            "label": f"evp-sgd-lr{lr:g}",
            "optimizer": "sgd",
            "momentum": 0.9,
            "lr": lr,
            "diversity": "none",
            **geo,
        }  # fmt: skip
        for lr in SGD_LRS
    ]
    threads = args.threads if args.threads is not None else default_threads(args.device)
    base = {
        "model": f"cifar:resnet{args.depths[0]}",
        "pretrained": str(root / "cifar10_resnets"),
        "data_dir": str(root / "mnist"),
        "epochs": args.sweep_epochs,
        "batch_size": args.batch_size,
        "label_map": "ilm",
        "log_every": 0,
        "workers": 0,
        "precision": args.precision,
        **({"device": args.device} if args.device else {}),
        **({"threads": threads} if threads else {}),
    }
    suite = parse_suite({"base": base, "datasets": ["mnist"], "methods": methods, "seeds": [42]}, "sweep")
    jobs = args.jobs if args.jobs is not None else default_jobs(args.device)
    records = run_suite(suite, output=out / "sweep", jobs=jobs, quiet=True).records
    unfinished = [f"{r.method} ({r.status}: {r.error})" for r in records if r.status != "done"]
    if unfinished:  # a selection over part of the sweep would not be the one it claims to be
        raise SystemExit(f"sweep: not every setting finished, so none is selected: {'; '.join(unfinished)}")
    val = {r.method: r.val_acc1 for r in records}

    def best(prefix: str) -> str:
        return max((k for k in val if k.startswith(prefix)), key=lambda k: val[k])

    evp = max((best(f"evp-{d}-") for d in DIVERSITY), key=lambda k: val[k])
    chosen = {
        **geo,
        "diversity": evp.split("-")[1],
        "normgrad_lr": float(evp.rsplit("lr", 1)[1]),
        "vp_lr": float(best("vp-").rsplit("lr", 1)[1]),
        "sgd_lr": float(best("evp-sgd-").rsplit("lr", 1)[1]),
        "sweep_val": val,
    }
    (out / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
    print("selected on validation:", {k: v for k, v in chosen.items() if k != "sweep_val"}, flush=True)
    return chosen


def final(args: argparse.Namespace, out: Path, chosen: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Stage 2: the demo's arms at the full budget, for each depth."""
    adamw_lr = args.adamw_lr if args.adamw_lr is not None else chosen.get("adamw_lr", ADAMW_LR)
    by_depth = {}
    for depth in args.depths:
        settings = DemoSettings(
            depth=depth, epochs=args.epochs, batch_size=args.batch_size, label_map="ilm", device=args.device,
            precision=args.precision, threads=args.threads, jobs=args.jobs, adamw_lr=adamw_lr,
            **{k: chosen[k] for k in CHOSEN_KEYS},
        )  # fmt: skip
        start = time.perf_counter()
        results = run_demo(args.data_dir, out / f"final-resnet{depth}", settings)
        by_depth[depth] = {"seconds": time.perf_counter() - start, "arms": results}
    return by_depth


def summary(out: Path, chosen: dict[str, Any], by_depth: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    picked = {k: v for k, v in chosen.items() if k != "sweep_val"}
    lines = [
        "# Reprogramming a frozen CIFAR-10 ResNet to MNIST",
        "",
        f"Settings from {args.chosen} (canvas from the flags when given): `{json.dumps(picked)}`"
        if args.chosen
        else f"Selected on validation (ResNet-{args.depths[0]}, {args.sweep_epochs} epochs): `{json.dumps(picked)}`",
        "",
        "| arm | " + " | ".join(f"ResNet-{d}: test (val) | last epoch" for d in by_depth) + " |",
        "|:--|" + "--:|--:|" * len(by_depth),
    ]
    arms = list(next(iter(by_depth.values()))["arms"])
    for arm in arms:
        cells = []
        for row in by_depth.values():
            r = row["arms"][arm]
            val = f" ({r['val']['acc1']:.2f})" if r.get("val") else ""
            last = f"{r['test_last']['acc1']:.2f}" if r.get("epochs") else "–"
            cells += [f"{r['test']['acc1']:.2f}{val}", last]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    per_arm = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''} per trained arm"
    lines += ["", f"{per_arm}, batch {args.batch_size}, device {args.device or 'auto'}."]
    for d, row in by_depth.items():
        vp = row["arms"]["vp"]["test"]["acc1"]
        gaps = [
            f"{arm} - vp = {row['arms'][arm]['test']['acc1'] - vp:+.2f}"
            for arm in ("evp", "evp-adamw")
            if arm in row["arms"]
        ]
        lines.append(f"ResNet-{d}: {', '.join(gaps)} points; {row['seconds'] / 60:.0f} min for all arms.")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def read_chosen(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """``--chosen``'s settings, or an argparse error when it is not a JSON object with what stage 2 takes (the
    canvas may come from the flags instead)."""
    fix = "give the chosen.json of an earlier run's --output"
    try:
        chosen = json.loads(Path(args.chosen).read_text())
    except (OSError, ValueError) as e:  # (a JSONDecodeError and a UnicodeDecodeError are ValueErrors)
        ap.error(f"--chosen {args.chosen}: {e.strerror if isinstance(e, OSError) else f'not JSON ({e})'}; {fix}")
    if not isinstance(chosen, dict):
        ap.error(f"--chosen {args.chosen}: not a JSON object; {fix}")
    missing = [k for k in CHOSEN_KEYS if k not in chosen and getattr(args, k, None) is None]
    if missing:
        ap.error(f"--chosen {args.chosen} lacks {', '.join(missing)}; {fix}")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data-dir", default="../shared/data", help="folder with cifar10_resnets/ and mnist/ (../shared/data)"
    )
    ap.add_argument("--output", default="bench_out/mnist", help="the runs and reports (bench_out/mnist)")
    ap.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    ap.add_argument("--precision", default=DemoSettings.precision, choices=PRECISIONS, help="autocast of every run")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: the demo's)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the demo's)")
    ap.add_argument(
        "--depths", type=int, nargs="+", default=[20], choices=CIFAR_RESNET_DEPTHS, help="ResNet depths (20)"
    )
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each trained arm in stage 2 (10)")
    ap.add_argument("--sweep-epochs", type=int, default=4, help="epochs of each stage-1 sweep run (4)")
    ap.add_argument("--input-size", type=int, default=None, help="canvas S (default: --chosen's, else 48)")
    ap.add_argument(
        "--inner-size", type=int, default=None, help="EVP's digit size s (default: --chosen's, else 32); VP's border "
        "is (S - s) / 2",
    )  # fmt: skip
    ap.add_argument("-b", "--batch-size", type=int, default=32, help="batch size (32)")
    ap.add_argument("--chosen", default=None, help="skip stage 1: a chosen.json from an earlier run")
    ap.add_argument(
        "--adamw-lr",
        type=float,
        default=None,
        help=f"lr of the evp-adamw arm (default: --chosen's adamw_lr, else {ADAMW_LR})",
    )
    args = ap.parse_args()
    earlier = read_chosen(ap, args) if args.chosen else None
    from_file = set()  # the settings --chosen's file gives
    for key, default in (("input_size", 48), ("inner_size", 32)):  # an explicit flag wins over --chosen
        if getattr(args, key) is None:
            setattr(args, key, earlier[key] if earlier else default)
            from_file |= {key} if earlier else set()
    out = Path(args.output)
    try:  # impossible settings fail here, not after the sweep or some of the arms
        if args.sweep_epochs < 1:
            raise ValueError(f"--sweep-epochs {args.sweep_epochs} must be at least 1")
        picked = {k: earlier[k] for k in (*CHOSEN_KEYS, "adamw_lr") if k in (earlier or {})}
        for typed in ("input_size", "inner_size", *(["adamw_lr"] if args.adamw_lr is not None else [])):
            picked.pop(typed, None)  # (given by the flags)
        from_file |= set(picked)
        adamw_lr = picked.pop("adamw_lr", args.adamw_lr if args.adamw_lr is not None else ADAMW_LR)
        DemoSettings(epochs=args.epochs, batch_size=args.batch_size, input_size=args.input_size,
                     inner_size=args.inner_size, threads=args.threads, jobs=args.jobs, adamw_lr=adamw_lr,
                     **picked)  # fmt: skip
        if args.device is not None:
            resolve_device(args.device)
        check_output_folder(out, "--output")
    except USER_ERRORS as e:
        message = user_message(e)
        named = [k for k in sorted(from_file) if f"--{k.replace('_', '-')} " in message]
        for key in named:  # (told as the file's keys, not as flags that were not typed)
            message = message.replace(f"--{key.replace('_', '-')} ", f"{key} ")
        ap.error(f"--chosen {args.chosen}: {message}" if named else message)
    if not Path(args.data_dir).is_dir():
        ap.error(f"--data-dir {args.data_dir} is not a folder: give the one that holds cifar10_resnets/ and mnist/")
    try:
        out.mkdir(parents=True, exist_ok=True)
        chosen = {**(earlier or sweep(args, out)), "input_size": args.input_size, "inner_size": args.inner_size}
        print(summary(out, chosen, final(args, out, chosen), args))
    except USER_ERRORS as e:  # what only vprompt can judge (a data file, a setting of chosen.json): one line
        print_user_error(e, ap.prog)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{ap.prog}: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)


if __name__ == "__main__":
    main()
