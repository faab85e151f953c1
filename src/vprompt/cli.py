"""The ``vprompt`` command line (also ``python -m vprompt``). The only module that knows argparse.

vprompt train --model ViT-B-32 --pretrained openai --dataset cifar100 --method evp
vprompt eval --checkpoint runs/<run>/prompt.safetensors --split test
vprompt zeroshot --model ViT-B-32 --pretrained openai --dataset cifar100
vprompt linprobe --model ViT-B-32 --pretrained openai --dataset cifar100
vprompt list models|datasets|methods
vprompt suite suite_clip_vitb32 [--dry-run]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import DIVERSITIES, HEADS, LABEL_MAPS, OPTIMIZERS, PRECISIONS, PROMPTERS, SCHEDULES, TEMPLATES
from .errors import INTERRUPTED_EXIT, USER_ERRORS, CLIError, print_user_error, sigterm_interrupts

__all__ = ["main", "build_parser"]

_log = logging.getLogger("vprompt")


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as in a YAML file (a number, true, a list), else taken as the text given."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import yaml

    if value.strip().isdigit():
        return key.replace("-", "_"), int(value)  # decimal: YAML 1.1 would read 020 as octal 16
    try:
        return key.replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError:  # *.jpg, a: b: c
        return key.replace("-", "_"), value


def _or_none(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that also takes ``none``: unset (a value of a config file undone)."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors ("invalid int value")
    return parse


def _add_head_options(g: Any, training: bool) -> None:
    """How a prompted model's outputs become class scores (not a linear probe's concern); ``training``: a command
    that trains, so that a head can learn too."""
    S = argparse.SUPPRESS
    g.add_argument(
        "--templates",
        default=S,
        choices=TEMPLATES,
        help="text templates of the CLIP head: single, the dataset's ensemble, or the 80 ImageNet templates",
    )
    g.add_argument(
        "--head",
        default=S,
        choices=HEADS,
        help="output head: auto (text for CLIP, the flm label map for classifiers), text, linear, or a label map",
    )
    g.add_argument("--label-map", default=S, choices=LABEL_MAPS, help="label map of a classifier's logits")
    g.add_argument("--ilm-interval", type=int, default=S, metavar="K", help="ilm: recompute the map every K epochs")
    if training:
        g.add_argument("--head-lr", type=float, default=S, help="AdamW lr of a trainable head (--head linear; 1e-3)")


def _add_run_options(p: argparse.ArgumentParser, training: bool = True, heads: bool = True) -> None:
    """Options shared by train, zeroshot and linprobe (``heads=False``: it has its own head, the probe).

    Defaults are SUPPRESS so only explicit values reach the config."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("what")
    g.add_argument("-c", "--config", dest="config_file", metavar="YAML", help="defaults from a YAML file")
    g.add_argument("--model", default=S, help="open_clip name (ViT-B-32) or source:name (default ViT-B-32)")
    g.add_argument("--pretrained", default=S, help="pretrained tag (openai), checkpoint path, or none")
    g.add_argument("--dataset", default=S, help="dataset name (`vprompt list datasets`; default cifar100)")
    g.add_argument("--data-dir", default=S, help="data folder (default $VPROMPT_DATA or ~/.cache/vprompt/data)")
    g.add_argument("--download", action=argparse.BooleanOptionalAction, default=S, help="download missing data")
    g.add_argument(
        "--dataset-option", dest="dataset_options", action="append", type=_key_value, default=S, metavar="KEY=VALUE",
        help="dataset-specific option (repeatable)",
    )  # fmt: skip
    if heads:
        _add_head_options(g, training)
    if training:
        g.add_argument(
            "--method",
            default=S,
            help="evp, vp, fixed_patch, random_patch, zeroshot, linprobe (`vprompt list methods`)",
        )
        g = p.add_argument_group("prompt")
        g.add_argument(
            "--prompter", default=S, choices=PROMPTERS, help="override the method's prompter (evp, pad, ...)"
        )
        g.add_argument("--input-size", type=int, default=S, help="S, the backbone input size (default: the model's)")
        g.add_argument("--inner-size", type=int, default=S, help="s, EVP's shrunk image size (default 164 at S=224)")
        g.add_argument("--prompt-size", type=int, default=S, help="p: EVP/VP border width or VP patch size")
        g = p.add_argument_group("optimization")
        g.add_argument("--epochs", type=int, default=S, help="epochs (EVP and VP: 1000)")
        g.add_argument("--lr", type=float, default=S, help="learning rate (EVP 70, VP 40)")
        g.add_argument(
            "--optimizer",
            default=S,
            choices=OPTIMIZERS,
            help="prompt optimizer (the method's own by default)",
        )
        g.add_argument("--momentum", type=float, default=S, help="SGD momentum (0.9)")
        g.add_argument("--weight-decay", type=float, default=S, help="weight decay (0)")
        g.add_argument("--schedule", default=S, choices=SCHEDULES, help="lr schedule")
        g.add_argument("--warmup-steps", type=int, default=S, help="linear warmup steps (cosine schedule)")
        g.add_argument("--diversity", default=S, choices=DIVERSITIES, help="input diversity")
        g.add_argument("--di-min-scale", type=float, default=S, help="di: smallest resize factor (0.9)")
        g.add_argument("--di-prob", type=float, default=S, help="di: probability of resize-and-pad (0.5)")
        g.add_argument("--seed", type=int, default=S, help="training seed (42)")
        g.add_argument("--eval-every", type=int, default=S, help="validate every N epochs (1)")
        g.add_argument("--l2-grid", default=S, metavar="L2,...", help="linprobe: L2 strengths")
    g = p.add_argument_group("protocol and engine")
    g.add_argument("-b", "--batch-size", type=int, default=S, help="global batch size (256)")
    g.add_argument("--eval-batch-size", type=int, default=S, help="evaluation batch size (the batch size)")
    g.add_argument("--val-fraction", type=float, default=S, help="training data held out for validation (0.1)")
    g.add_argument("--split-seed", type=int, default=S, help="seed of the validation split and few-shot draw (0)")
    g.add_argument(
        "--shots", type=_or_none(int), default=S, metavar="K", help="train on K images per class (few-shot; none: all)"
    )
    g.add_argument(
        "--train-fraction", type=_or_none(float), default=S, metavar="F",
        help="train on this share of each class (none: all)",
    )  # fmt: skip
    g.add_argument("--precision", default=S, choices=PRECISIONS, help="autocast precision")
    g.add_argument("--device", default=S, help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument(
        "--workers", type=int, default=S, help="data-loading processes for image files (4; at most the usable cores)"
    )
    g.add_argument("--threads", type=int, default=S, help="CPU threads of PyTorch (0 or unset: its default)")
    g.add_argument("--log-every", type=int, default=S, help="log a line every N steps (50; 0: never)")
    g.add_argument("--output", default=S, help="parent folder of run folders (runs)")
    g.add_argument("--name", default=S, help="run folder name (default: method-model-dataset-seedN[-Kshot|-fracF])")
    if training:
        g.add_argument("--resume", default=S, metavar="latest|PATH", help="continue from last.pt")
        g.add_argument(
            "--deterministic", action=argparse.BooleanOptionalAction, default=S,
            help="deterministic GPU kernels: a GPU run repeats exactly (may be slower; a CPU run always does)",
        )  # fmt: skip


def _add_untrained_options(g: Any, resume_help: str) -> None:
    """The few settings of zeroshot and linprobe beyond the run options: they train no prompt."""
    S = argparse.SUPPRESS
    g.add_argument("--input-size", type=int, default=S, help="S (default: the model's)")
    g.add_argument("--seed", type=int, default=S, help="seed of a random-init backbone and of the rlm label map")
    g.add_argument("--resume", default=S, metavar="latest", help=resume_help)


def _dests(p: argparse.ArgumentParser) -> frozenset[str]:
    """The settings a subcommand has flags for."""
    return frozenset(a.dest for a in p._actions)


def keep_offered(values: dict[str, Any], offered: frozenset[str], warn: str | None = None) -> dict[str, Any]:
    """The settings of ``values`` a command has flags for (``offered``): zeroshot and linprobe train no prompt, so a
    training config's ``epochs`` or ``lr`` is not theirs. The run settings left out are named after ``warn`` (None:
    silently); keys that are no setting at all are kept, for :func:`~vprompt.config.resolve_config` to refuse, and
    so is a run's ``recipe_filled``, by which the command's own recipe replaces what the run's filled in."""
    import dataclasses

    from .config import RunConfig, is_default

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unused = sorted(k for k in values if k in fields and k not in offered and k != "recipe_filled")
    # (named where they would change something: not the method the command replaces, nor a default spelled out)
    told = [k for k in unused if k != "method" and not is_default(k, values[k])]
    if told and warn:
        _log.warning("%s it has no flag for: %s", warn, ", ".join(told))
    return {k: v for k, v in values.items() if k not in unused}


@functools.cache  # a suite asks for every cell and table row; the parser is the same each time
def offered_settings(command: str) -> frozenset[str]:
    """The settings ``vprompt COMMAND`` (zeroshot, linprobe) has flags for: what it takes of a shared config."""
    return build_parser().parse_args([command]).offered


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``vprompt``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="vprompt", description="Pixel-level visual prompting (EVP) and its baselines for frozen vision models."
    )
    parser.add_argument("--version", action="version", version=f"vprompt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="learn a visual prompt", description="Learn a visual prompt on a frozen model.")
    _add_run_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved prompt", description="Evaluate a prompt.safetensors.")
    p.add_argument("--checkpoint", required=True, help="prompt.safetensors, or the run folder holding it")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (test)")
    p.add_argument("--data-dir", default=None, help="where the dataset is on this machine")
    p.add_argument("--pretrained", default=None, help="where the backbone weights are on this machine")
    p.add_argument("--device", default=None, help="cuda, cpu, ...")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="batch size")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="autocast precision (the run's)")
    p.add_argument(
        "--workers", type=int, default=4, help="data-loading processes for image files (4; at most the usable cores)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (its default)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--shift", nargs="*", default=None, metavar="NAME",
        help="also evaluate on the dataset's distribution-shift sets (CIFAR-10-C for cifar10, WILDS OOD splits): "
        "all by default, or these names/globs (cifar10c/fog, 'cifar10c/*/5')",
    )  # fmt: skip
    p.add_argument("--shift-severity", nargs="+", type=int, default=None, metavar="S", help="CIFAR-C severities")
    p.add_argument("--download", action="store_true", help="download missing data (the dataset's, CIFAR-C)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "suite", help="run a grid of datasets x methods x seeds and tabulate it",
        description="Run every (dataset, method, seed[, shots]) of a suite config (skipping finished runs, resuming "
        "interrupted ones) and write a paper-style table (Markdown and CSV).",
    )  # fmt: skip
    p.add_argument(
        "suite_config", metavar="CONFIG.yaml", help="the suite config, or a shipped one by name (vprompt list configs)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state; run nothing (status 1: some cannot run)"
    )
    p.add_argument("--output", default=None, help="folder of the run folders and tables (overrides base.output)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (1)")
    p.set_defaults(func=_cmd_suite)

    p = sub.add_parser(
        "zeroshot",
        help="no-prompt baseline: zero-shot CLIP, or a classifier through a label map",
        description="Evaluate a frozen model with no prompt: CLIP zero-shot, or a classifier through a label map "
        "(--label-map identity|flm|rlm).",
    )
    _add_run_options(p, training=False)
    _add_untrained_options(p.add_argument_group("zero-shot"), resume_help="evaluate again in the same run folder")
    p.set_defaults(func=_cmd_zeroshot, offered=_dests(p))

    p = sub.add_parser(
        "linprobe",
        help="linear-probe baseline",
        description="Logistic regression on cached frozen features (a CLIP ViT's pooled features before its "
        "projection, other CLIP models' image embeddings, or a classifier's penultimate features), its L2 strength "
        "chosen on the validation split.",
    )
    _add_run_options(p, training=False, heads=False)
    g = p.add_argument_group("linear probe")
    g.add_argument("--l2-grid", default=argparse.SUPPRESS, metavar="L2,...",
                   help="L2 strengths to sweep (default 1e-6..1e2, two per decade)")  # fmt: skip
    _add_untrained_options(g, resume_help="redo on the cached features (e.g. with another --l2-grid)")
    p.set_defaults(func=_cmd_linprobe, offered=_dests(p))

    p = sub.add_parser(
        "demo",
        help="reprogram a frozen CIFAR-10 ResNet to read MNIST digits (the offline experiment)",
        description="Train every arm (no prompt, VP, EVP and its ablations) at the same budget on real MNIST "
        "digits with a frozen pretrained CIFAR-10 ResNet; write a results table, learning curves and prompt images.",
    )
    from .demo import DEMO_DIVERSITIES, DEMO_LABEL_MAPS, DemoSettings

    d = DemoSettings()
    p.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="folder with cifar10_resnets/ and mnist/ (default ../shared/data when it holds mnist/, else download)",
    )
    p.add_argument("--output", default="demo_out", help="report and run folders (demo_out)")
    p.add_argument("--depth", type=int, default=d.depth, choices=[20, 32, 44, 56], help="ResNet depth (20)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs of each trained arm ({d.epochs})")
    p.add_argument("-b", "--batch-size", type=int, default=d.batch_size, help=f"batch size ({d.batch_size})")
    p.add_argument("--input-size", type=int, default=d.input_size, help=f"canvas S ({d.input_size})")
    p.add_argument("--inner-size", type=int, default=d.inner_size, help=f"EVP's shrunk digit s ({d.inner_size})")
    p.add_argument(
        "--label-map", default=d.label_map, choices=DEMO_LABEL_MAPS, help=f"prompted arms' map ({d.label_map})"
    )
    p.add_argument(
        "--diversity", default=d.diversity, choices=DEMO_DIVERSITIES, help=f"EVP's diversity ({d.diversity})"
    )
    p.add_argument("--normgrad-lr", type=float, default=d.normgrad_lr, help=f"normalized-gradient lr ({d.normgrad_lr})")
    p.add_argument("--sgd-lr", type=float, default=d.sgd_lr, help=f"plain-SGD EVP lr ({d.sgd_lr})")
    p.add_argument("--vp-lr", type=float, default=d.vp_lr, help=f"VP's lr ({d.vp_lr})")
    p.add_argument(
        "--adamw-lr",
        type=float,
        default=None,
        help="also train evp-adamw: EVP with AdamW at this lr (0.3 in the benchmark)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"training seed ({d.seed})")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help=f"autocast ({d.precision})")
    p.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per arm (default: 1 on the CPU)")
    p.add_argument("--jobs", type=int, default=None, help="arms at a time (default: a core each on the CPU, up to 5)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("list", help="list models, datasets, methods or shipped configs")
    p.add_argument("what", choices=["models", "datasets", "methods", "configs"])
    p.set_defaults(func=_cmd_list)
    return parser


def _run_values(args: argparse.Namespace, method: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Config file values overlaid with the explicit command-line values, and where each came from; ``method``:
    the command's own (zeroshot, linprobe).

    zeroshot and linprobe take from a config file only the settings they offer as flags, so that the file of a
    training run can be reused for them; the others (a prompt, an optimizer, epochs) are named and left out. What a
    method's recipe filled in a run's saved config is no setting of the file's
    (:func:`~vprompt.config.run_file_settings`)."""
    from .config import check_dataset_options, check_recipe_kept, find_config, less_given, load_yaml, under

    values: dict[str, Any] = {}
    file = getattr(args, "config_file", None)
    if file:
        file = find_config(file)  # errors name the file read, a shipped config's too
        values = load_yaml(file)
        offered = getattr(args, "offered", None)
        if offered is not None:
            values = keep_offered(values, offered, f"{args.command}: not using the settings of {file}")
    sources = dict.fromkeys(values, str(file))
    skip = {"func", "command", "config_file", "offered"}
    cli = {k: v for k, v in vars(args).items() if k not in skip}
    if file:
        check_recipe_kept(cli, values, "command line", str(file))
    from_file = check_dataset_options(values.get("dataset_options"), str(file)) if file else {}
    if "dataset_options" in cli:
        from_file = {k: v for k, v in from_file.items() if k not in dict(cli["dataset_options"])}
        cli["dataset_options"] = {**from_file, **dict(cli["dataset_options"])}
    values = less_given(values, cli)  # a setting typed here is the user's, whatever a run's saved config had filled
    values = {**under(cli, values, method), **cli}
    sources.update(dict.fromkeys(cli, "command line"))
    sources.update({f"dataset_options.{k}": str(file) for k in from_file})  # each option's own, for its errors
    return values, sources


def _print_results(results: dict[str, Any]) -> None:
    val = results.get("val")
    line = f"{results['method']} on {results['dataset']}: test acc {results['test']['acc1']:.2f}"
    if val and results.get("l2") is not None:  # a linear probe selects its L2 strength, not an epoch
        line += f" | val acc {val['acc1']:.2f} (L2 {results['l2']:.1e} selected on val)"
    elif val and results.get("selection") == "val":
        line += f" | val acc {val['acc1']:.2f} (epoch {results['best_epoch']} selected on val)"
    elif val:  # (a run of no epochs: nothing selected)
        line += f" | val acc {val['acc1']:.2f}"
    if results.get("epochs"):
        line += f" | last epoch test acc {results['test_last']['acc1']:.2f}"
    print(line)


def _cmd_train(args: argparse.Namespace, method: str | None = None) -> int:
    from .config import in_file_terms, is_default, load_yaml, resolve_config, resolve_leaving_unused, unused_settings
    from .data import DatasetOptionError, get_dataset_spec
    from .distributed import launched
    from .engine import fit

    values, sources = _run_values(args, method)
    typed = {k for k, where in sources.items() if where == "command line"}
    refused: set[str] | None = typed  # settings refused where the run would not use them
    if method is not None:  # zeroshot, linprobe
        values["method"], sources["method"] = method, f"vprompt {method}"
        # a training run's file serves them: what of it their run does not use (a few-shot run's shots for zero-shot
        # CLIP) is left out, as are the settings they have no flag for
    elif args.config_file:  # and of a file, what its own run would not use; what a flag typed here made unused
        own = unused_settings(load_yaml(args.config_file))  # (--head linear over ILM's interval) is left out
        refused = typed | own if own is not None else None
    else:
        refused = None
    if refused is None:  # every setting given is the user's to answer for
        cfg = resolve_config(values, source="command line", sources=sources)
    else:
        cfg, unused = resolve_leaving_unused(values, refused, source="command line", sources=sources)
        # (a value typed that does nothing is not the file's; nor is a default spelled out: a full-data run's shots)
        unused = [k for k in unused if k not in typed and not is_default(k, values.get(k))]
        if unused:
            _log.warning("vprompt %s: not using the settings of %s its run does not use: %s", args.command,
                         args.config_file, ", ".join(unused))  # fmt: skip
    if sources.get("dataset", "command line") != "command line":  # a dataset named in a file: the file is named
        try:
            get_dataset_spec(cfg.dataset)
        except ValueError as e:
            raise ValueError(f"{sources['dataset']}: {str(e).replace('--dataset', 'dataset', 1)}") from None
    try:
        results = fit(cfg)
    except DatasetOptionError as e:  # checked where the data is read: named here with the file it came from
        if f"dataset_options.{e.key}" not in sources:
            raise
        raise ValueError(f"{sources[f'dataset_options.{e.key}']}: {e}") from e
    except (ValueError, FileNotFoundError) as e:  # a setting checked as the run starts, named by its flag
        flag = re.match(r"--([a-z][a-z0-9-]*)\b", str(e))
        where = sources.get(flag.group(1).replace("-", "_"), "command line") if flag else "command line"
        if where == "command line" or where.startswith("vprompt "):
            raise
        told = f"{where}: {in_file_terms(str(e))}"  # (came from a config file: named with it, in its terms)
        raise (FileNotFoundError(told) if isinstance(e, FileNotFoundError) else ValueError(told)) from e
    if launched().is_main:  # under torchrun, once
        _print_results(results)
        print(f"run folder: {cfg.run_dir}")
    return 0


def _cmd_zeroshot(args: argparse.Namespace) -> int:
    return _cmd_train(args, "zeroshot")


def _cmd_linprobe(args: argparse.Namespace) -> int:
    return _cmd_train(args, "linprobe")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .distributed import DistEnv, launched
    from .engine import evaluate_checkpoint, setup_logging

    setup_logging(None, DistEnv())
    if launched().enabled:  # every process would evaluate everything
        raise CLIError("vprompt eval runs in one process; launch it without torchrun")
    if args.shift is None and args.shift_severity:
        raise CLIError("--shift-severity applies to the shift sets: add --shift (all of them) or --shift NAME ...")
    result = evaluate_checkpoint(
        args.checkpoint,
        split=args.split,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        pretrained=args.pretrained,
        workers=args.workers,
        threads=args.threads,
        shift=args.shift,
        shift_severities=args.shift_severity,
        download=args.download,
    )
    if args.json:
        print(json.dumps(result))
    elif "shift" in result:
        from .data.shift import format_shift_report

        print(format_shift_report(result))
    else:
        print(
            f"{result['dataset']} {result['split']}: acc {result['acc1']:.2f} (top-5 {result['acc5']:.2f}, "
            f"loss {result['loss']:.4f}, {result['n']} images)"
        )
    return 0


def _cmd_suite(args: argparse.Namespace) -> int:
    from .suite import load_suite, run_suite

    suite = load_suite(args.suite_config)
    report = run_suite(suite, output=args.output, dry_run=args.dry_run, fail_fast=args.fail_fast, jobs=args.jobs)
    return 1 if report.failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_data_dir, run_demo

    data_dir = args.data_dir if "data_dir" in args else default_data_dir()
    run_demo(data_dir, args.output, demo_settings(args))
    return 0


def demo_settings(args: argparse.Namespace) -> Any:
    """The :class:`vprompt.demo.DemoSettings` that ``vprompt demo``'s parsed options describe."""
    import dataclasses

    from .demo import DemoSettings

    fields = {f.name for f in dataclasses.fields(DemoSettings)}
    return DemoSettings(**{k: v for k, v in vars(args).items() if k in fields})


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from .config import list_methods

        for name, doc in list_methods().items():
            print(f"{name:14s} {doc}")
    elif args.what == "configs":
        from .config import shipped_configs

        for name, path in shipped_configs().items():
            first = path.read_text(encoding="utf-8").splitlines()[0]
            print(f"{name:20s} {first.lstrip('# ')}")
    elif args.what == "datasets":
        from .data import get_dataset_spec, list_datasets

        for name in list_datasets():
            print(f"{name:14s} {get_dataset_spec(name).description}")
    else:
        import open_clip

        from .backbones import list_models, source_description

        tags: dict[str, list[str]] = {}
        for model, tag in open_clip.list_pretrained():
            tags.setdefault(model, []).append(tag)
        for source, names in list_models().items():
            print(f"# {source}: {source_description(source)}")
            for n in names:
                print(f"{n}: {', '.join(tags[n])}" if tags.get(n) else n)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vprompt`` command; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # told by the command's parser, with its usage (argparse tells them as the top level's)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with sigterm_interrupts():
            status = func(args)
            sys.stdout.flush()  # (here, not at exit: output to a pipe is held until it fills or the process ends)
            return status
    except USER_ERRORS as e:
        print_user_error(e, f"vprompt {args.command}")
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("train", "zeroshot", "linprobe")  # (a suite or demo resumes its runs itself)
        how = "resume with --resume latest" if resumable else "run the same command again"
        print(f"vprompt: interrupted; files already written are intact ({how})", file=sys.stderr)
        return INTERRUPTED_EXIT
    except BrokenPipeError:  # the reader of the output stopped (`vprompt list models | head`): nothing to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (so that the exit's flush does not fail)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
