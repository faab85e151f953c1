"""``vprompt suite CONFIG.yaml``: run a grid of datasets x methods x seeds (x shots) and tabulate it like a paper.

Every cell of the grid is one ordinary run (a :class:`~vprompt.config.RunConfig` through
:func:`~vprompt.config.resolve_config`, trained by :func:`vprompt.engine.fit` in this process, one after the
other) in its own run folder under the suite's output folder. Run folder names are deterministic
(``RunConfig.run_name``: ``<method>-<model>-<dataset>-seed<seed>[-<K>shot]``, with the entry's ``label`` in place
of the method when it has one), so running the suite again

* skips a run whose ``results.json`` exists (finished),
* resumes a run that has ``last.pt`` or ``results.previous.json`` but no ``results.json`` (interrupted;
  ``--resume latest``),
* refuses a run folder that holds a run with other settings (recorded as failed; change ``output`` or delete it),
* records a run whose ``results.json`` or ``config.yaml`` is damaged (not JSON or YAML, no test accuracy) as
  failed, naming it,

and a failing run is logged and recorded as failed without stopping the grid (``--fail-fast`` stops it). After
every run the tables are rewritten, so they always show what has finished. The runs share one process and its
device (one GPU, or the CPU), or with ``jobs`` run that many at a time, each in its own process; the suite itself
is not meant to be started under ``torchrun``.

Config schema (YAML)::

    base:                    # RunConfig settings shared by every run (any `vprompt train` setting, with `_`)
      model: ViT-B-32
      pretrained: openai
      batch_size: 256
      output: runs/suite     # the suite folder: run folders and tables (`--output` overrides;
                             # default runs/<config file name>)
    datasets: [cifar100, cifar10]
    methods:                 # a method name, or a mapping: `name` plus RunConfig overrides, and optionally
      - evp                  #   `label` (the table row and run-name prefix; needed when a method appears twice),
      - {name: vp, lr: 40}   #   `seeds` and `shots` (replacing the suite's for this method)
      - {name: zeroshot, seeds: [42]}
    seeds: [42, 43, 44]      # training seeds (the validation split and few-shot draw use base.split_seed)
    shots: [null, 16]        # optional: few-shot settings, null = the full training set
    dataset_overrides:       # optional: settings for one dataset (dataset_options are merged)
      sun397: {batch_size: 128}
    table:                   # optional
      name: suite_results    # file stem: <name>.md, <name>.csv (one row per run), <name>_table.csv
      title: EVP benchmark   # the Markdown heading
      output: DIR            # where the tables go (default: the suite folder)

Settings apply in this order, later ones winning: the method's recipe, ``base``, ``dataset_overrides[dataset]``,
the method entry; then the cell's dataset, method, seed and shots. ``dataset``, ``method``, ``seed``, ``shots``,
``name`` and ``resume`` are set by the grid and may not appear in ``base``, overrides or method entries.
``zeroshot`` and ``linprobe`` take from ``base`` and ``dataset_overrides`` only the settings their commands have
flags for (a shared ``epochs`` or ``lr`` is for the prompts), and a finished run of theirs is compared on those.

The table: one row per method entry (x shots), one column per dataset and an ``Average`` column. A cell is the
mean test top-1 accuracy (%) over the seeds, ``± `` the sample standard deviation (ddof 1) when there are two or
more; ``(k/n)`` marks a cell with only k of its n seeds finished, ``failed`` one whose runs all failed, ``–`` one
not run yet. The average is the mean of the row's per-dataset means, given only when every cell of the row is
complete.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import logging
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    RunConfig,
    check_dataset_options,
    find_config,
    in_file_terms,
    is_plain_name,
    load_yaml,
    resolve_leaving_unused,
    under,
)
from .errors import INTERRUPTED_EXIT, USER_ERRORS, DataFileError, did_you_mean, one_line, sigterm_interrupts

__all__ = ["SuiteConfig", "MethodEntry", "SuiteCell", "RunRecord", "SuiteReport", "load_suite", "expand_suite",
           "run_suite", "build_table"]  # fmt: skip

_log = logging.getLogger("vprompt")

_TOP_KEYS = ("base", "datasets", "methods", "seeds", "shots", "dataset_overrides", "table")
_GRID_KEYS = ("dataset", "method", "seed", "shots", "name", "resume")
_TABLE_KEYS = ("name", "title", "output")
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


@dataclass
class MethodEntry:
    """A row of the table: a method, its overrides, and optionally its own seeds and shots."""

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    shots: list[int | None] | None = None


@dataclass
class SuiteConfig:
    """A parsed suite config (see the module doc)."""

    base: dict[str, Any]
    datasets: list[str]
    methods: list[MethodEntry]
    seeds: list[int]
    shots: list[int | None] = field(default_factory=lambda: [None])
    dataset_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    table_name: str = "suite_results"
    table_title: str | None = None
    table_output: str | None = None
    output: str = "runs/suite"
    source: str = "suite config"

    def __post_init__(self) -> None:  # (here, not in the parser: a config built in Python writes the files too)
        if not is_plain_name(self.table_name):
            raise ValueError(
                f"{self.source}: table: 'name' {self.table_name!r} must be a file name, without / or \\ (the folder is "
                "'output')"
            )


@dataclass
class SuiteCell:
    """One run of the grid; ``cfg`` is None (and ``error`` says why) when its settings do not resolve."""

    method: str
    dataset: str
    seed: int
    shots: int | None
    cfg: RunConfig | None
    error: str | None = None

    @property
    def label(self) -> str:
        return run_label(self.method, self.dataset, self.seed, self.shots)


def run_label(method: str, dataset: str, seed: int, shots: int | None) -> str:
    """``METHOD on DATASET, seed S[, K-shot]``: a run of the grid as the suite's lines and tables name it."""
    return f"{method} on {dataset}, seed {seed}" + (f", {shots}-shot" if shots else "")


@dataclass
class RunRecord:
    """What the suite knows about one run: ``status`` is ``done``, ``failed`` or ``pending``."""

    method: str
    shots: int | None
    dataset: str
    seed: int
    status: str
    test_acc1: float | None = None
    val_acc1: float | None = None
    best_epoch: int | None = None
    run_dir: str = ""
    error: str = ""
    train_fraction: float | None = None


@dataclass
class SuiteReport:
    """The outcome of :func:`run_suite`."""

    records: list[RunRecord]
    markdown: str
    files: list[Path]

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == "failed"]


# --------------------------------------------------------------------------------------------------------------
# Parsing and expansion


def _check_keys(keys: Sequence[str], allowed: Sequence[str], where: str) -> None:
    for k in keys:
        if k not in allowed:
            raise ValueError(f"{where}: unknown key {k!r}{did_you_mean(k, allowed)}")


def _settings(values: Any, where: str, base: bool = False) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of settings, not {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    grid = [k for k in values if k in _GRID_KEYS]
    if grid:
        raise ValueError(f"{where}: {grid[0]!r} is set by the grid (use the suite's datasets/methods/seeds/shots)")
    if "output" in values and not base:
        raise ValueError(f"{where}: 'output' is the suite's folder, set once under 'base' (or with --output)")
    _check_keys(list(values), sorted(_RUN_FIELDS), where)
    if "dataset_options" in values:
        values["dataset_options"] = check_dataset_options(values["dataset_options"], where)
    return values


def _once_each(values: list[Any], what: str, where: str) -> list[Any]:
    twice = sorted({repr(v) for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{where}: {what} {twice[0]} is listed twice (each would be the same run)")
    return values


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _seeds_list(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):  # (a count of seeds, or one seed? neither is guessed)
        raise ValueError(f"{where}: 'seeds' must be a list of integers: [{value}] for seed {value} alone")
    seeds = _as_list(value)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{where}: 'seeds' must be a list of integers")
    return _once_each(seeds, "seed", where)


def _shots_list(value: Any, where: str) -> list[int | None]:
    shots = _as_list(value) or [None]
    for k in shots:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"{where}: shots must be positive integers or null, not {k!r}")
    return _once_each(shots, "shots", where)


def parse_suite(data: dict[str, Any], source: str = "suite config", default_output: str = "runs/suite") -> SuiteConfig:
    """Validate a suite config mapping (see the module doc) into a :class:`SuiteConfig`."""
    _check_keys(list(data), _TOP_KEYS, source)
    base = _settings(data.get("base"), f"{source}: base", base=True)
    datasets = [str(d) for d in _as_list(data.get("datasets"))]
    if not datasets or len(set(datasets)) != len(datasets):
        raise ValueError(f"{source}: 'datasets' must list at least one dataset, each once")
    seeds = _seeds_list(data.get("seeds", [RunConfig.seed]), source)
    methods: list[MethodEntry] = []
    for i, m in enumerate(_as_list(data.get("methods"))):
        where = f"{source}: methods[{i}]"
        if isinstance(m, str):
            methods.append(MethodEntry(m, m))
            continue
        if not isinstance(m, dict) or "name" not in m:
            raise ValueError(f"{where} must be a method name or a mapping with a 'name'")
        m = dict(m)
        name = str(m.pop("name"))
        label = m.pop("label", None)
        label = name if label is None else str(label)  # (label: null, as if left out)
        if not label.strip(". ") or any(c in label for c in "/\\|"):
            raise ValueError(
                f"{where}: label {label!r} names its runs' folders and a table row; give a name without '/', '\\' "
                "or '|'"
            )
        seeds_ = _seeds_list(m.pop("seeds"), where) if "seeds" in m else None
        shots_ = _shots_list(m.pop("shots"), where) if "shots" in m else None
        methods.append(MethodEntry(name, label, _settings(m, where), seeds_, shots_))
    if not methods:
        raise ValueError(f"{source}: 'methods' must list at least one method")
    labels = [m.label for m in methods]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"{source}: method {dup[0]!r} appears twice; give the entries distinct 'label's")
    overrides = data.get("dataset_overrides") or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{source}: 'dataset_overrides' must map dataset names to settings")
    ds_over = {str(k): _settings(v, f"{source}: dataset_overrides.{k}") for k, v in overrides.items()}
    stray = [k for k in ds_over if k not in datasets]
    if stray:
        raise ValueError(f"{source}: dataset_overrides names {stray[0]!r}, which is not in 'datasets'")
    table = data.get("table") or {}
    if not isinstance(table, dict):
        raise ValueError(f"{source}: 'table' must be a mapping (name, title, output)")
    _check_keys(list(table), _TABLE_KEYS, f"{source}: table")
    for m in methods:
        offered = _untrained_settings(m.name)
        if offered is not None:
            from .cli import keep_offered

            shared = {k: v for layer in (base, *ds_over.values()) for k, v in layer.items()}
            keep_offered(
                shared, offered, f"{source}: {m.label} is not using the shared settings (base, dataset_overrides)"
            )
    output = _text(base, "output", default_output, f"{source}: base")
    base.pop("output", None)
    return SuiteConfig(
        base=base,
        datasets=datasets,
        methods=methods,
        seeds=seeds,
        shots=_shots_list(data.get("shots"), source),
        dataset_overrides=ds_over,
        table_name=_text(table, "name", "suite_results", f"{source}: table"),
        table_title=_text(table, "title", None, f"{source}: table"),
        table_output=_text(table, "output", None, f"{source}: table"),
        output=output,
        source=source,
    )


def _text(values: dict[str, Any], key: str, default: str | None, where: str) -> str | None:
    """``values[key]`` as text (a folder, a file name, a title), or ``default`` where it is not given."""
    if key not in values:
        return default
    value = values[key]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value):
        return str(value)
    raise ValueError(f"{where}: {key!r} must be a name or a text, not {value!r}")


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite config file; the default output folder is ``runs/<file name>``."""
    path = find_config(path)
    return parse_suite(load_yaml(path), source=str(path), default_output=str(Path("runs") / path.stem))


def _rows(suite: SuiteConfig) -> list[tuple[MethodEntry, int | None]]:
    return [(m, k) for m in suite.methods for k in (m.shots or suite.shots)]


def _untrained_settings(method: str) -> frozenset[str] | None:
    """The settings zeroshot and linprobe use (those their commands have flags for); None for the other methods."""
    if method not in ("zeroshot", "linprobe"):
        return None
    from .cli import offered_settings

    return offered_settings(method) | {"method"}


def _cell_settings(suite: SuiteConfig, dataset: str, m: MethodEntry) -> dict[str, Any]:
    """The settings a method entry runs with on a dataset: the suite's base, under the dataset's overrides, under
    the entry's own (dataset options merged key by key the same way). zeroshot and linprobe take from the base and
    the dataset's overrides only the settings they have flags for, as from a config file: they train no prompt, so
    a shared ``epochs`` or ``lr`` is not theirs."""
    shared = [suite.base, suite.dataset_overrides.get(dataset, {})]
    offered = _untrained_settings(m.name)
    if offered is not None:
        from .cli import keep_offered

        shared = [keep_offered(layer, offered) for layer in shared]
    layers = [*shared, m.overrides]
    values: dict[str, Any] = {}
    for layer in layers:
        values = {**under(layer, values, m.name), **layer}
    options = {k: v for layer in layers for k, v in layer.get("dataset_options", {}).items()}
    if options:
        values["dataset_options"] = options
    return values


def expand_suite(suite: SuiteConfig, output: str | Path | None = None) -> list[SuiteCell]:
    """Every run of the grid, dataset by dataset. Cells whose settings do not resolve (an unknown method or
    dataset, e.g. one not installed yet) come back with ``cfg=None`` and the reason in ``error``."""
    from .backbones import check_model
    from .build import check_sizes
    from .data import check_dataset, get_dataset_spec

    out = str(output) if output is not None else suite.output
    cells = []
    for dataset in suite.datasets:
        try:
            get_dataset_spec(dataset)
            ds_error = None
        except ValueError as e:
            ds_error = str(e)
        for m, shots in _rows(suite):
            for seed in m.seeds or suite.seeds:
                values = _cell_settings(suite, dataset, m)
                values.update(dataset=dataset, method=m.name, seed=seed, shots=shots, output=out)
                where = f"{suite.source} ({m.label} on {dataset})"
                cfg, error = None, ds_error and f"{where}: {ds_error}"
                try:
                    # a shared setting a method does not use is no error of its (only its entry's own are), nor
                    # part of its run's config (which, given back as a config file, would be refused for it)
                    cfg, _ = resolve_leaving_unused(values, set(m.overrides), source=where)
                    try:
                        check_model(cfg.model)  # a mistyped name is invalid in a dry run too, not a new run
                        check_sizes(cfg)  # as are sizes that do not fit the model
                        if ds_error is None:
                            check_dataset(dataset, cfg.dataset_options)  # and a mistyped dataset option
                    except ValueError as e:
                        raise ValueError(f"{where}: {e}") from None
                    if m.label != m.name:  # the run name with the label in place of the method
                        name = cfg.run_name
                        rest = name[len(cfg.method) :] if name.startswith(cfg.method) else f"-{name}"
                        cfg.name = m.label + rest
                except ValueError as e:
                    error = error or str(e)
                error = error and in_file_terms(error)  # (the settings came from the suite's file)
                cells.append(SuiteCell(m.label, dataset, seed, shots, cfg if error is None else None, error))
    return cells


# --------------------------------------------------------------------------------------------------------------
# Running


def _sizes_planned(cfg: RunConfig, model_size: Any) -> RunConfig:
    """``cfg`` with the sizes it leaves to the model set as a model of input size ``model_size`` (an earlier run's
    in the same folder, which may be another model) gives them: config.yaml holds the sizes as they came out, not
    as they were given."""
    from .build import planned_sizes

    if not isinstance(model_size, int):  # a run from before the model's own size was saved
        return cfg
    try:
        return dataclasses.replace(cfg, **planned_sizes(cfg, model_size))
    except ValueError:  # sizes that do not fit: the run will say so
        return cfg


#: The states of a cell that is recorded as failed without running.
_CANNOT_RUN = ("invalid", "conflict", "damaged")


def _state(cell: SuiteCell) -> tuple[str, str, dict[str, Any] | None]:
    """(``invalid``, ``conflict``, ``damaged``, ``done``, ``resume`` or ``new``; a reason for the first three; the
    results of a ``done`` one)."""
    from .runs import CONFLICT, changed_settings, holds_run, identity_keys, read_results, result_keys, saved_run

    if cell.cfg is None:
        return "invalid", cell.error or "invalid settings", None
    run_dir = cell.cfg.run_dir
    finished = (run_dir / "results.json").exists()
    interrupted = not finished and holds_run(run_dir)  # (training state, or a redo's earlier results)
    try:
        saved = saved_run(run_dir)
        results = read_results(run_dir) if finished else None
    except DataFileError as e:  # (a failed cell: the grid goes on, and the rerun after the fix redoes it)
        return "damaged", str(e), None
    if finished or interrupted or saved.get("config"):  # (also a run stopped before its first last.pt)
        # A finished run computed with another precision, validation frequency or L2 sweep is not this cell's
        # result; an unfinished one may continue with them, as --resume allows.
        keys = (*identity_keys(cell.cfg), *(result_keys(cell.cfg) if finished else ()))
        planned = _sizes_planned(cell.cfg, saved.get("model_input_size"))
        diff = changed_settings(saved.get("config", {}), planned, keys)
        if diff:
            return "conflict", f"{run_dir} {CONFLICT} ({diff}); delete it or change the output", None
    if finished:
        return "done", "", results
    return ("resume" if interrupted else "new"), "", None


def _record(cell: SuiteCell, status: str, results: dict[str, Any] | None = None, error: str = "") -> RunRecord:
    rec = RunRecord(cell.method, cell.shots, cell.dataset, cell.seed, status, error=error)
    if cell.cfg is not None:
        rec.run_dir = str(cell.cfg.run_dir)
        rec.train_fraction = cell.cfg.train_fraction
    if results:
        rec.test_acc1 = float(results["test"]["acc1"])
        rec.val_acc1 = float(results["val"]["acc1"]) if results.get("val") else None
        rec.best_epoch = results.get("best_epoch")
    return rec


def run_suite(
    suite: SuiteConfig,
    output: str | Path | None = None,
    dry_run: bool = False,
    fail_fast: bool = False,
    fit: Callable[[RunConfig], dict[str, Any]] | None = None,
    quiet: bool = False,
    jobs: int = 1,
) -> SuiteReport:
    """Run (or with ``dry_run``, list) the grid and write the tables; returns the records and the Markdown table.

    Args:
        suite: the parsed config.
        output: the suite folder, overriding ``base.output``.
        dry_run: print each run's state (done, resume, new, invalid, conflict, damaged) and the table of what is
            finished; run and write nothing. The runs that cannot run (invalid, conflicting, damaged results) come
            back as failed.
        fail_fast: re-raise the first failure instead of recording it and going on.
        fit: the function that runs one config (default :func:`vprompt.engine.fit`).
        quiet: do not print the table at the end (a caller that reports on its own).
        jobs: runs at a time, each in its own process (``fit`` is then always :func:`vprompt.engine.fit`). On the
            CPU each process gets an equal share of the cores as PyTorch threads: small models run faster as
            several single-threaded runs than as one run over several threads.
    """
    from . import engine
    from .checkpoint import check_output_folder
    from .distributed import DistEnv

    if jobs < 1:
        raise ValueError(f"--jobs {jobs} must be at least 1")
    out = Path(output if output is not None else suite.output).expanduser()
    table_dir = Path(suite.table_output).expanduser() if suite.table_output else out
    if not dry_run:  # before any run: told once, not once per run
        check_output_folder(out, "--output" if output is not None else "base: output:")
        if suite.table_output:
            check_output_folder(table_dir, "table: output:")
    cells = expand_suite(suite, out)
    engine.setup_logging(None, DistEnv())
    records: list[RunRecord] = []
    # Cells of one run: zero-shot in each few-shot row (it reads no training image, so its run is the same)
    sharing: dict[Path, list[SuiteCell]] = {}
    for cell in cells:
        if cell.cfg is not None:
            sharing.setdefault(cell.cfg.run_dir, []).append(cell)

    def first(cell: SuiteCell) -> SuiteCell:  # the cell that runs its run
        return sharing[cell.cfg.run_dir][0] if cell.cfg is not None else cell

    def later(cell: SuiteCell) -> bool:  # a cell whose run is an earlier cell's
        return first(cell) is not cell

    own = {id(c): _state(c) for c in cells if not later(c)}
    states = [own[id(first(c))] for c in cells]  # (a later cell: its first's)
    if dry_run:
        shown = ["shared" if later(c) else state for c, (state, _, _) in zip(cells, states)]
        width = max(map(len, shown))
        for cell, state, (_, why, _) in zip(cells, shown, states):
            where = cell.cfg.run_dir if cell.cfg is not None else cell.label
            print(f"{state:{width}s}  {where}" + (f"  ({why})" if why and state != "shared" else ""))
        counts = {s: shown.count(s) for s in dict.fromkeys(x for x in shown if x != "shared")}
        shared = f" ({shown.count('shared')} more cells share them)" if "shared" in shown else ""
        print(f"{len(cells) - shown.count('shared')} runs{shared}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for cell, (_, _, results) in zip(cells, states):
            # Only finished runs enter the table; what would fail is listed above.
            records.append(_record(cell, "done", results) if results else _record(cell, "pending"))
        markdown = build_table(records, suite)[0]
        print(markdown)
        cannot = {id(c): why for c, (state, why, _) in zip(cells, states) if state in _CANNOT_RUN}
        records = [_record(c, "failed", error=cannot[id(c)]) if id(c) in cannot else r for c, r in zip(cells, records)]
        return SuiteReport(records, markdown, [])  # the runs that cannot run count as failed

    pending = {id(c): _record(c, "pending") for c in cells}
    queue: list[tuple[str, SuiteCell, RunConfig]] = []
    verb: dict[int, str] = {}

    def record(cell: SuiteCell, status: str, results: dict[str, Any] | None = None, error: str = "") -> None:
        for c in sharing[cell.cfg.run_dir] if cell.cfg is not None else [cell]:
            pending[id(c)] = _record(c, status, results, error)

    for i, (cell, (state, why, results)) in enumerate(zip(cells, states)):
        tag = f"[{i + 1}/{len(cells)}] {cell.label}"
        if later(cell):
            continue  # (recorded with the first)
        if state in _CANNOT_RUN:
            _log.error("suite %s: %s", tag, why)
            if fail_fast:
                raise ValueError(f"{tag}: {why}")
            record(cell, "failed", error=why)
        elif state == "done":
            _log.info("suite %s: finished already (%s)", tag, cell.cfg.run_dir)
            record(cell, "done", results)
        else:
            assert cell.cfg is not None
            verb[id(cell)] = "resuming" if state == "resume" else "starting"
            queue.append((tag, cell, dataclasses.replace(cell.cfg, resume="latest")))
    parallel = jobs > 1 and len(queue) > 1
    for tag, cell, cfg in queue if parallel else ():  # (one at a time, each is told as it starts)
        _log.info("suite %s: queued (%s) %s", tag, verb[id(cell)], cfg.run_dir)

    def finished(tag: str, cell: SuiteCell, outcome: dict[str, Any] | BaseException) -> None:
        if isinstance(outcome, BaseException):  # one failing run must not stop the grid
            trace = None if one_line(outcome) else outcome  # a bad setting or missing file is one line
            told = in_file_terms(str(outcome))  # (its settings are the file's)
            error = f"{type(outcome).__name__}: {told}"
            _log.error("suite %s failed: %s", tag, error, exc_info=trace)
            record(cell, "failed", error=error)
        else:
            record(cell, "done", outcome)
        write_tables([pending[id(c)] for c in cells], suite, table_dir)  # current while the grid runs
        if fail_fast and isinstance(outcome, BaseException):  # (the failing run tabled first)
            if trace is not None:
                raise trace
            raise ValueError(f"{tag}: {told}") from outcome  # as the log told it

    if parallel:
        _fetch_data_once([cfg for _, _, cfg in queue])
        _run_parallel(queue, jobs, finished)
    else:
        fit = fit or (lambda cfg: engine.fit(cfg))
        if any(cfg.deterministic for _, _, cfg in queue):  # (the runs share this process)
            engine.fix_cublas_workspace()
        for tag, cell, cfg in queue:
            _log.info("suite %s: %s %s", tag, verb[id(cell)], cfg.run_dir)
            try:
                outcome: dict[str, Any] | BaseException = fit(cfg)
            except Exception as e:  # logged, recorded or re-raised by finished()
                outcome = e
            finally:
                engine.setup_logging(None, DistEnv())  # the next messages are the suite's, not this run's log
            finished(tag, cell, outcome)
            # A failed run's error holds its traceback, whose frames hold the run's model and data: dropped before
            # the memory is given back, or the next run would start beside them (a run out of GPU memory, the next)
            del outcome
            _free_memory()
    records = [pending[id(c)] for c in cells]
    files = write_tables(records, suite, table_dir)
    markdown = build_table(records, suite)[0]
    if not quiet:
        print(markdown)
        print(f"tables: {', '.join(str(f) for f in files)}")
    return SuiteReport(records, markdown, files)


def _fetch_data_once(cfgs: Sequence[RunConfig]) -> None:
    """Download each dataset the runs need here, once, before parallel runs would all download it into the same
    files at the same time. A dataset that fails here is left to fail, and be recorded, in its runs."""
    from .data import create_dataset, get_dataset_spec

    seen = set()
    for cfg in cfgs:
        options = get_dataset_spec(cfg.dataset).explicit_options(cfg.dataset_options)  # (a known dataset: a run)
        key = (cfg.dataset, cfg.data_dir, repr(sorted(options.items())))
        if not cfg.download or key in seen:
            continue
        seen.add(key)
        for split in ("train", "test"):
            try:
                create_dataset(cfg.dataset, cfg.data_dir, split, download=True, **cfg.dataset_options)
            except Exception as e:  # noqa: BLE001 - reported by the runs themselves
                _log.warning("suite: could not prepare %s %s before the parallel runs: %s", cfg.dataset, split, e)


class _ChildTraceback(Exception):
    """The traceback of an error raised in a run's process, as text (shown as the cause of the error)."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


#: How long a run stopped by the suite may take to unwind before it is killed.
_STOP_S = 30.0


def _stop_when_orphaned(parent: int) -> None:
    """Send this process SIGTERM (which unwinds a run as Ctrl-C does, keeping it resumable) once the suite's process
    ``parent`` is gone: killed with SIGKILL, or by the OOM killer, it could not stop its runs itself."""
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vprompt-suite-watch", daemon=True).start()


def _run_in_child(cfg: RunConfig, threads: int, send: Any, tag: str, parent: int) -> None:
    """A run in its own (spawned) process: its results, or its error and traceback, go back through ``send``. Its
    console lines begin with ``tag``; the run stops if the suite's process ``parent`` ends before it."""
    import pickle
    import signal
    import traceback

    import torch

    from .distributed import DistEnv
    from .engine import fit, setup_logging, tag_console

    tag_console(tag)
    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the suite's process stops the runs, with SIGTERM, which unwinds a run
    # as Ctrl-C would (an interrupted run's last.pt keeps it resumable).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    trace = ""
    try:
        with sigterm_interrupts():
            _stop_when_orphaned(parent)
            outcome: Any = fit(cfg)
    except KeyboardInterrupt:  # stopped by the suite, which reads nothing more, or by a SIGTERM from outside
        sys.exit(INTERRUPTED_EXIT)
    except BaseException as e:  # noqa: BLE001 - reported by the suite's process
        outcome, trace = e, traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001 - an error the suite's process could not rebuild: its kind and message
            kind = next((k for k in USER_ERRORS if isinstance(e, k)), RuntimeError)
            outcome = kind(f"{type(e).__name__}: {e}" if kind is RuntimeError else str(e))
    finally:
        setup_logging(None, DistEnv())
    send.send((outcome, trace))
    send.close()


def _receive(pipe: Any) -> Any:
    """What a run's process sent, or None where it ended without sending (the pipe is closed)."""
    try:
        return pipe.recv()
    except (EOFError, OSError):
        return None


def _run_parallel(
    queue: Sequence[tuple[str, SuiteCell, RunConfig]],
    jobs: int,
    finished: Callable[[str, SuiteCell, dict[str, Any] | BaseException], None],
) -> None:
    """Run the queued configs ``jobs`` at a time, each in its own fresh (spawned) process, reporting each as it
    ends. A process that dies (killed for memory, a crash in native code) fails its own run only."""
    import multiprocessing
    from multiprocessing.connection import wait

    from .distributed import usable_cpus

    threads = max(1, usable_cpus() // min(jobs, len(queue)))  # an equal share for each run at once
    ctx = multiprocessing.get_context("spawn")
    waiting = list(queue)
    running: dict[Any, dict[str, Any]] = {}  # the process's sentinel -> the run
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                tag, cell, cfg = waiting.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                place = tag.split("]")[0] + "] "  # "[3/12] ", the run's place in the grid
                process = ctx.Process(target=_run_in_child, args=(cfg, threads, send, place, os.getpid()), daemon=True)
                process.start()
                send.close()  # (the child holds the sending end)
                running[process.sentinel] = {"tag": tag, "cell": cell, "process": process, "pipe": recv}
            pipes = {run["pipe"]: run for run in running.values() if "sent" not in run}
            for ready in wait([*running, *pipes]):
                if ready in pipes:  # read as soon as sent: a child blocked on a full pipe would never end
                    pipes[ready]["sent"] = _receive(ready)
            for sentinel in [s for s, run in running.items() if not run["process"].is_alive()]:
                run = running.pop(sentinel)
                if "sent" not in run:
                    run["sent"] = _receive(run["pipe"]) if run["pipe"].poll() else None
                run["pipe"].close()
                run["process"].join()
                outcome, trace = run.get("sent") or (None, "")
                if outcome is None:
                    code = run["process"].exitcode
                    outcome = RuntimeError(
                        "the run's process was stopped (SIGTERM) before the run ended; what it wrote is kept, and "
                        "running the suite again resumes it"
                        if code == INTERRUPTED_EXIT
                        else f"the run's process died (exit code {code}) before the run ended"
                    )
                elif trace and isinstance(outcome, BaseException):
                    outcome.__cause__ = _ChildTraceback(trace)
                finished(run["tag"], run["cell"], outcome)
    finally:  # Ctrl-C, or --fail-fast: stop the runs in progress now; the queued ones never start
        for run in running.values():
            run["process"].terminate()
        for run in running.values():
            run["process"].join(_STOP_S)
            if run["process"].is_alive():  # stuck while it unwinds: what it had written is kept regardless
                run["process"].kill()
                run["process"].join()
            run["pipe"].close()


def _free_memory() -> None:
    """Give the finished run's device memory back before the next run (cycles may still hold its tensors)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------------------
# Tables


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) >= 2 else None)


def build_table(records: Sequence[RunRecord], suite: SuiteConfig) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table and its rows as numbers (method, shots, ``<dataset>``, ``<dataset> std``, ``<dataset> n``,
    ``<dataset> train_fraction``, ``Average``; None where not available). Its second column says how much training
    data each row had: where a row has no shots, the fraction of the training split its runs read (per dataset where
    they differ; zero-shot reads none)."""

    def fraction(label: str, dataset: str) -> float | None:
        seen = {r.train_fraction for r in records if (r.method, r.dataset, r.shots) == (label, dataset, None)}
        return seen.pop() if len(seen) == 1 else None

    with_shots = any(k is not None for _, k in _rows(suite))
    fractions = {m.label: [fraction(m.label, ds) for ds in suite.datasets] for m, _ in _rows(suite)}
    with_data = with_shots or any(f is not None for row in fractions.values() for f in row)
    header = ["Method", *(["Shots" if with_shots else "Training data"] if with_data else []), *suite.datasets]
    lines = [
        *([f"## {suite.table_title}", ""] if suite.table_title else []),
        "| " + " | ".join([*header, "Average"]) + " |",
        "|" + "|".join([":--", *([":-:"] if with_data else []), *["--:"] * (len(suite.datasets) + 1)]) + "|",
    ]
    rows: list[dict[str, Any]] = []
    for m, shots in _rows(suite):
        mine_fractions = fractions[m.label]
        uniform = len(set(mine_fractions)) == 1
        row: dict[str, Any] = {"method": m.label, "shots": shots}
        texts, means, complete = [], [], True
        for ds, share_of_train in zip(suite.datasets, mine_fractions):
            mine = [r for r in records if r.method == m.label and r.shots == shots and r.dataset == ds]
            accs = [r.test_acc1 for r in mine if r.status == "done" and r.test_acc1 is not None]
            mean, std = _mean_std(accs) if accs else (None, None)
            row.update({ds: mean, f"{ds} std": std, f"{ds} n": len(accs)})
            row[f"{ds} train_fraction"] = share_of_train if shots is None else None
            if accs:
                text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                if len(accs) < len(mine):
                    text += f" ({len(accs)}/{len(mine)})"
                    complete = False
                means.append(mean)
            else:
                text = "failed" if mine and all(r.status == "failed" for r in mine) else "–"
                complete = False
            texts.append(text)
        average = statistics.fmean(means) if complete and means else None
        row["Average"] = average
        rows.append(row)
        share = [("full" if f is None else f"{f} of train") for f in mine_fractions]
        data = share[0] if uniform else ", ".join(f"{ds}: {t}" for ds, t in zip(suite.datasets, share))
        shot_cell = [(data if shots is None else str(shots))] if with_data else []
        avg_text = f"{average:.2f}" if average is not None else "–"
        lines.append("| " + " | ".join([m.label, *shot_cell, *texts, avg_text]) + " |")
    row_seeds = {m.label: ", ".join(map(str, m.seeds or suite.seeds)) for m, _ in _rows(suite)}
    over = (
        f"seeds {row_seeds.popitem()[1]}"
        if len(set(row_seeds.values())) == 1
        else "the seeds of each row, " + ("; ".join(f"{label}: {seeds}" for label, seeds in row_seeds.items()))
    )
    done = [r for r in records if r.status == "done"]
    unselected = sorted({f"{r.method} on {r.dataset}" for r in done if r.val_acc1 is None})  # val_fraction 0
    which = "the epoch selected on validation"
    if unselected and all(r.val_acc1 is None for r in done):
        which = "the last epoch (no validation split)"
    elif unselected:
        which += f" (the last epoch for {', '.join(unselected)}: no validation split)"
    lines += [
        "",
        f"Top-1 test accuracy (%) of {which}; mean ± sample standard deviation over {over}. (k/n): k of n seeds "
        "finished; –: not finished yet.",
    ]
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {run_label(r.method, r.dataset, r.seed, r.shots)}: {r.error}" for r in failed]
    return "\n".join(lines) + "\n", rows


_RUN_COLUMNS = ("method", "shots", "train_fraction", "dataset", "seed", "status", "test_acc1", "val_acc1",
                "best_epoch", "run_dir", "error")  # fmt: skip


def _csv_text(header: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
        )
    return buf.getvalue()


def write_tables(records: Sequence[RunRecord], suite: SuiteConfig, folder: str | Path) -> list[Path]:
    """Write ``<name>.md`` (the table), ``<name>.csv`` (one row per run) and ``<name>_table.csv`` (the table as
    numbers) into ``folder``; returns their paths. Run folders in the CSV are relative to ``folder``."""
    from .checkpoint import atomic_write

    folder = Path(folder)
    markdown, table_rows = build_table(records, suite)
    per_run = []
    for r in records:
        row = dataclasses.asdict(r)
        row["run_dir"] = os.path.relpath(r.run_dir, folder) if r.run_dir else ""
        per_run.append(row)
    columns = ("", " std", " n", " train_fraction")
    table_header = ["method", "shots", *(f"{ds}{c}" for ds in suite.datasets for c in columns)]
    table_header.append("Average")
    texts = {
        f"{suite.table_name}.md": markdown,
        f"{suite.table_name}.csv": _csv_text(_RUN_COLUMNS, per_run),
        f"{suite.table_name}_table.csv": _csv_text(table_header, table_rows),
    }
    paths = []
    for name, text in texts.items():
        atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))
        paths.append(folder / name)
    return paths
