"""`vprompt suite`: grid expansion, skipping and resuming runs, failures, and the paper-style table."""

import csv
import json
import multiprocessing
import os
import re
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest
import yaml

from vprompt import cli, engine
from vprompt.config import in_file_terms, load_yaml, resolve_config
from vprompt.data import DatasetSpec
from vprompt.data import registry as data_registry
from vprompt.data.datasets import synthetic_dataset
from vprompt.runs import changed_settings
from vprompt.suite import expand_suite, load_suite, parse_suite, run_suite, write_tables

from .conftest import TINY_MODEL

PAPER_DATASETS = ["cifar100", "cifar10", "flowers102", "food101", "eurosat", "sun397", "svhn", "pets", "dtd",
                  "resisc45", "clevr_count", "dmlab"]  # fmt: skip
#: The least a finished run's results.json holds.
FINISHED = json.dumps({"test": {"acc1": 50.0}})


@pytest.fixture
def synthetic_b(monkeypatch):
    """A second tiny dataset: 4 classes, other colors."""
    spec = DatasetSpec(
        name="synthetic_b",
        builder=lambda **kw: synthetic_dataset(**{**kw, "num_classes": 4, "seed": 1}),
        options={"n_train": "", "n_test": ""},
    )
    monkeypatch.setitem(data_registry._REGISTRY, "synthetic_b", spec)


def _suite_file(tmp_path, datasets, name="suite.yaml", **extra):
    config = {
        "base": {"model": TINY_MODEL, "epochs": 1, "batch_size": 16, "log_every": 0, "device": "cpu",
                 "dataset_options": {"n_train": 48, "n_test": 24}, "output": str(tmp_path / "runs")},
        "datasets": datasets,
        "methods": ["evp", {"name": "vp", "warmup_steps": 2}],
        "seeds": [7],
        **extra,
    }  # fmt: skip
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


class CountingFit:
    def __init__(self, monkeypatch):
        self.configs = []
        real = engine.fit

        def fit(cfg):
            self.configs.append(cfg)
            return real(cfg)

        monkeypatch.setattr(engine, "fit", fit)


def test_grid_runs_skips_finished_runs_resumes_and_tabulates(tmp_path, monkeypatch, capsys, synthetic_b):
    runs = tmp_path / "runs"
    fits = CountingFit(monkeypatch)
    # A half-finished grid: only the first dataset has been run.
    assert cli.main(["suite", str(_suite_file(tmp_path, ["synthetic"], "half.yaml"))]) == 0
    assert [(c.method, c.dataset) for c in fits.configs] == [("evp", "synthetic"), ("vp", "synthetic")]
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/results.json")}
    assert len(finished) == 2

    fits.configs.clear()
    full = _suite_file(tmp_path, ["synthetic", "synthetic_b"])
    assert cli.main(["suite", str(full)]) == 0
    assert [(c.method, c.dataset) for c in fits.configs] == [("evp", "synthetic_b"), ("vp", "synthetic_b")]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not redone

    # An interrupted run (last.pt but no results.json) is resumed, not restarted.
    interrupted = runs / f"vp-{TINY_MODEL}-synthetic_b-seed7" / "results.json"
    before = json.loads(interrupted.read_text())
    interrupted.unlink()
    fits.configs.clear()
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: pytest.fail("a finished epoch was re-trained"))
    assert cli.main(["suite", str(full)]) == 0
    assert [(c.method, c.dataset, c.resume) for c in fits.configs] == [("vp", "synthetic_b", "latest")]
    assert json.loads(interrupted.read_text())["test"] == before["test"]

    # The table, recomputed from the run folders.
    acc = {}
    for m in ("evp", "vp"):
        for d in ("synthetic", "synthetic_b"):
            acc[m, d] = json.loads((runs / f"{m}-{TINY_MODEL}-{d}-seed7" / "results.json").read_text())["test"]["acc1"]
    md = (runs / "suite_results.md").read_text()
    assert "| Method | synthetic | synthetic_b | Average |" in md
    for m in ("evp", "vp"):
        a, b = acc[m, "synthetic"], acc[m, "synthetic_b"]
        assert f"| {m} | {a:.2f} | {b:.2f} | {(a + b) / 2:.2f} |" in md
    with open(runs / "suite_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "done" and r["seed"] == "7" for r in rows)
    for r in rows:
        assert float(r["test_acc1"]) == acc[r["method"], r["dataset"]]
        assert (runs / r["run_dir"] / "results.json").is_file()  # relative to the table's folder
    with open(runs / "suite_results_table.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert float(table["evp"]["Average"]) == pytest.approx((acc["evp", "synthetic"] + acc["evp", "synthetic_b"]) / 2)
    assert float(table["vp"]["synthetic_b"]) == acc["vp", "synthetic_b"] and table["vp"]["synthetic_b n"] == "1"

    # Other settings in the same folders are refused, not mixed in.
    data = yaml.safe_load(full.read_text())
    data["base"]["epochs"] = 2
    fits.configs.clear()
    capsys.readouterr()
    report = run_suite(parse_suite(data), dry_run=True)
    out = capsys.readouterr().out
    assert "4 runs: 4 conflict" in out and "epochs=1 there, 2 here" in out
    assert not fits.configs and "| evp | – | – | – |" in report.markdown
    data["base"].update(epochs=1, precision="bf16")  # what the runs compute with counts too, not only the recipe
    run_suite(parse_suite(data), dry_run=True)
    assert "4 runs: 4 conflict" in capsys.readouterr().out
    data["base"].update(epochs=2, precision="fp32")
    assert cli.main(["suite", str(full), "--output", str(runs)]) == 0 and not fits.configs
    data["base"]["output"] = str(runs)
    full.write_text(yaml.safe_dump(data))
    assert cli.main(["suite", str(full), "--dry-run"]) == 1  # runs that cannot run: told by the status too
    assert cli.main(["suite", str(full)]) == 1  # refused runs count as failed
    assert not fits.configs and "holds a run with other settings" in (runs / "suite_results.md").read_text()


def _fake_fit(accs, fail=()):
    """A stand-in for engine.fit that writes results.json with given test accuracies (or raises)."""

    def fit(cfg):
        if (cfg.method, cfg.dataset, cfg.seed) in fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        acc = accs[cfg.method, cfg.dataset, cfg.seed]
        results = {"test": {"acc1": acc}, "val": {"acc1": acc + 1}, "best_epoch": 3}
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "results.json").write_text(json.dumps(results))
        return results

    return fit


def _small_suite(tmp_path, **extra):
    return parse_suite(
        {
            "base": {"output": str(tmp_path)},
            "datasets": ["d1", "d2"],
            "methods": ["evp", "vp"],
            "seeds": [1, 2, 3],
            **extra,
        }  # fmt: skip
    )


def test_table_mean_std_partial_and_failed_cells(tmp_path, monkeypatch, capsys, vprompt_caplog):
    for name in ("d1", "d2"):
        monkeypatch.setitem(data_registry._REGISTRY, name, DatasetSpec(name=name, builder=synthetic_dataset))
    accs = {(m, d, s): 50.0 + 10 * (m == "vp") + 5 * (d == "d2") + s * s for m in ("evp", "vp") for d in ("d1", "d2")
            for s in (1, 2, 3)}  # fmt: skip
    fail = {("vp", "d2", 2), ("vp", "d1", 1), ("vp", "d1", 2), ("vp", "d1", 3)}
    report = run_suite(_small_suite(tmp_path), fit=_fake_fit(accs, fail))
    assert len(report.failed) == 4 and len(report.records) == 12  # the failures did not stop the grid

    d1 = [accs["evp", "d1", s] for s in (1, 2, 3)]
    d2 = [accs["evp", "d2", s] for s in (1, 2, 3)]
    m1, s1 = statistics.mean(d1), statistics.stdev(d1)  # sample std (ddof 1)
    m2, s2 = statistics.mean(d2), statistics.stdev(d2)
    md = (tmp_path / "suite_results.md").read_text()
    assert f"| evp | {m1:.2f} ± {s1:.2f} | {m2:.2f} ± {s2:.2f} | {(m1 + m2) / 2:.2f} |" in md
    vp2 = [accs["vp", "d2", s] for s in (1, 3)]
    assert f"| vp | failed | {statistics.mean(vp2):.2f} ± {statistics.stdev(vp2):.2f} (2/3) | – |" in md
    assert "vp on d2, seed 2: RuntimeError: CUDA out of memory (simulated)" in md
    assert md in capsys.readouterr().out

    # While the grid runs, a cell whose first seed failed and whose others are still to come is not "failed" yet.
    from vprompt.suite import RunRecord, build_table

    waiting = [RunRecord("vp", None, "d1", 1, "failed", error="x")] + [
        RunRecord("vp", None, "d1", s, "pending") for s in (2, 3)
    ]
    assert "| vp | – |" in build_table(waiting, _small_suite(tmp_path, datasets=["d1"], methods=["vp"]))[0]
    # The note says which epoch a run's figure is of: with no validation split (val_fraction 0) the last.
    grid = _small_suite(tmp_path, methods=["vp"])
    runs = [RunRecord("vp", None, d, 1, "done", test_acc1=50.0, val_acc1=v) for d, v in (("d1", 40.0), ("d2", None))]
    assert "of the epoch selected on validation; mean" in build_table(runs[:1], grid)[0]
    assert "of the last epoch (no validation split); mean" in build_table(runs[1:], grid)[0]
    assert "selected on validation (the last epoch for vp on d2: no validation split)" in build_table(runs, grid)[0]

    # Run again: finished runs are read back, only the failed ones are retried.
    calls = []
    fit = _fake_fit(accs)
    run_suite(_small_suite(tmp_path), fit=lambda cfg: calls.append((cfg.method, cfg.dataset, cfg.seed)) or fit(cfg))
    assert sorted(calls) == sorted(fail)
    assert "(2/3)" not in (tmp_path / "suite_results.md").read_text()

    vprompt_caplog.clear()
    with pytest.raises(RuntimeError, match="simulated"):
        run_suite(_small_suite(tmp_path / "again"), fit=_fake_fit(accs, fail), fail_fast=True)
    started = [r.getMessage() for r in vprompt_caplog.records if "starting" in r.getMessage()]
    assert len(started) == 4 and "vp on d1, seed 1: starting" in started[-1]  # the failing run, told as it started
    assert "vp on d1, seed 1 failed: RuntimeError" in vprompt_caplog.records[-1].getMessage()
    assert "CUDA out of memory" in (tmp_path / "again" / "suite_results.csv").read_text()  # tabled before it stops
    # a user error stops it in one line in the file's terms, as the log tells it, the runs done so far tabled
    missing = FileNotFoundError("no weights here; pass --pretrained PATH or --download")
    with pytest.raises(ValueError, match=r"vp on d1, seed 1: no weights here; pass pretrained PATH or download: true"):
        run_suite(
            _small_suite(tmp_path / "user"),
            fit=lambda cfg: (
                (_ for _ in ()).throw(missing) if cfg.seed == 1 and cfg.method == "vp" else _fake_fit(accs)(cfg)
            ),
            fail_fast=True,
        )
    assert "no weights here" in (tmp_path / "user" / "suite_results.csv").read_text()


def test_a_failure_of_the_users_making_is_logged_without_a_traceback(tmp_path, monkeypatch, vprompt_caplog):
    for name in ("d1", "d2"):
        monkeypatch.setitem(data_registry._REGISTRY, name, DatasetSpec(name=name, builder=synthetic_dataset))

    def fit(cfg):
        if cfg.dataset == "d1":
            raise FileNotFoundError(f"no such folder for {cfg.dataset}")
        raise RuntimeError("a bug")

    run_suite(_small_suite(tmp_path), fit=fit)
    failures = [r for r in vprompt_caplog.records if "failed:" in r.getMessage()]
    assert failures and all(("FileNotFoundError" in r.getMessage()) == (r.exc_info is None) for r in failures)

    vprompt_caplog.clear()  # VPROMPT_DEBUG shows every traceback, as it does for a single run
    monkeypatch.setenv("VPROMPT_DEBUG", "1")
    run_suite(_small_suite(tmp_path / "debug"), fit=fit)
    failures = [r for r in vprompt_caplog.records if "failed:" in r.getMessage()]
    assert any("FileNotFoundError" in r.getMessage() for r in failures)
    assert failures and all(r.exc_info is not None for r in failures)


def test_a_failed_runs_error_names_the_suite_files_keys_not_flags(tmp_path, vprompt_caplog):
    # the run's own error says --data-dir and --download; its settings came from the suite's file
    suite = parse_suite({
        "base": {"model": TINY_MODEL, "pretrained": "none", "output": str(tmp_path / "runs"), "epochs": 1,
                 "data_dir": str(tmp_path / "nothere"), "download": False},
        "datasets": ["mnist"], "methods": ["vp"], "seeds": [1],
    })  # fmt: skip
    (record,) = run_suite(suite, quiet=True).records
    assert record.status == "failed" and "data_dir" in record.error and "download: true" in record.error
    assert "--" not in record.error
    assert any("data_dir" in r.getMessage() for r in vprompt_caplog.records if "failed:" in r.getMessage())
    assert "data_dir" in (tmp_path / "runs" / "suite_results.md").read_text()
    assert in_file_terms("--no-download; --dataset-option crop=20; --resume latest; --jobs 2") == (
        "download: false; dataset_options: {crop: 20}; --resume latest; --jobs 2"  # (a suite resumes; --jobs its flag)
    )
    # a command shown as an example keeps its flags, and a path is no flag
    text = "train a linear layer (vprompt train --head linear); /data/--seed/x.png; --seed 3"
    assert in_file_terms(text) == "train a linear layer (vprompt train --head linear); /data/--seed/x.png; seed 3"


def test_zero_shot_in_few_shot_rows_is_one_run_shown_in_each_row(tmp_path, capsys):
    # it reads no training image: K shots are no setting of its (a class with fewer than K would fail it), and
    # a label map computed on the training images is
    suite = parse_suite({
        "base": {"model": TINY_MODEL, "output": str(tmp_path)}, "datasets": ["synthetic"], "seeds": [1],
        "shots": [None, 2, 8],
        "methods": ["zeroshot", {"name": "zeroshot", "label": "zs-flm", "model": "cifar:resnet20", "label_map": "flm"}],
    })  # fmt: skip
    cells = expand_suite(suite)
    assert [c.cfg.shots for c in cells] == [None, None, None, None, 2, 8]
    assert len({c.cfg.run_dir for c in cells[:3]}) == 1 and len({c.cfg.run_dir for c in cells[3:]}) == 3
    run_suite(suite, dry_run=True)
    out = capsys.readouterr().out
    assert "4 runs (2 more cells share them): 4 new" in out and out.count("shared  ") == 2
    calls = []
    fit = _fake_fit({("zeroshot", "synthetic", 1): 40.0})
    report = run_suite(suite, fit=lambda cfg: calls.append(cfg.label_map) or fit(cfg), quiet=True)
    assert calls == [None, "flm", "flm", "flm"]  # the plain zero-shot run once, not three times
    assert [r.status for r in report.records] == ["done"] * 6
    assert "| zeroshot | 2 | 40.00 |" in report.markdown and "| zeroshot | 8 | 40.00 |" in report.markdown
    dry = run_suite(suite, dry_run=True)  # finished: the shared cells show its result too
    assert "| zeroshot | 8 | 40.00 |" in dry.markdown and "2 more cells share them): 4 done" in capsys.readouterr().out
    with pytest.raises(ValueError, match="shots 2: a run that trains nothing, with head text, reads no training"):
        resolve_config({"model": TINY_MODEL, "method": "zeroshot", "shots": 2})


def test_shots_rows_labels_and_per_method_seeds():
    suite = parse_suite({
        "base": {"model": "ViT-B-32"}, "datasets": ["synthetic"], "seeds": [1, 2], "shots": [None, 4],
        "methods": ["evp", {"name": "evp", "label": "evp-di", "diversity": "di"},
                    {"name": "zeroshot", "seeds": [42], "shots": [None]}],
    })  # fmt: skip
    cells = expand_suite(suite, output="out")
    assert len(cells) == 2 * 2 * 2 + 1
    names = {c.cfg.run_dir.as_posix() for c in cells}
    assert "out/evp-ViT-B-32-synthetic-seed2-4shot" in names and "out/evp-di-ViT-B-32-synthetic-seed1" in names
    assert "out/zeroshot-ViT-B-32-synthetic-seed42" in names and len(names) == len(cells)
    di = next(c.cfg for c in cells if c.method == "evp-di")
    assert di.diversity == "di" and di.lr == 70.0  # the entry's override over the method's recipe
    md = run_suite(suite, output="out", dry_run=True).markdown
    assert "| Method | Shots | synthetic | Average |" in md and "| evp | 4 | – | – |" in md


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"datasets": ["a"], "methods": ["evp"], "seed": [1]}, "unknown key 'seed'; did you mean seeds"),
        ({"datasets": ["a"], "methods": ["evp"], "base": {"dataset": "b"}}, "'dataset' is set by the grid"),
        ({"datasets": ["a"], "methods": ["evp"], "base": {"learning_rate": 1}}, "unknown key 'learning_rate'"),
        ({"datasets": ["a"], "methods": ["evp", {"name": "evp", "lr": 1}]}, "give the entries distinct 'label's"),
        ({"datasets": ["a"], "methods": [{"name": "evp", "label": "../x"}]}, r"methods\[0\]: label '\.\./x' names"),
        ({"datasets": ["a"], "methods": [{"name": "evp", "label": ".."}]}, "give a name without '/'"),
        ({"datasets": ["a"], "methods": [{"name": "evp", "label": "a|b"}]}, "a table row; give a name without"),
        ({"datasets": ["a"], "methods": ["evp"], "shots": [0]}, "shots must be positive integers or null"),
        ({"datasets": ["a"], "methods": []}, "'methods' must list at least one method"),
        ({"datasets": ["a"], "methods": ["evp"], "dataset_overrides": {"b": {}}}, "which is not in 'datasets'"),
        ({"datasets": ["a"], "methods": ["evp"], "seeds": [1, 1]}, "seed 1 is listed twice"),
        (
            {"datasets": ["a"], "methods": [{"name": "evp", "seeds": 3}]},
            r"must be a list of integers: \[3\] for seed 3",
        ),
        ({"datasets": ["a"], "methods": [{"name": "evp", "shots": [4, 4]}]}, r"methods\[0\]: shots 4 is listed twice"),
        ({"datasets": ["a"], "methods": [{"name": "evp", "output": "x"}]}, "'output' is the suite's folder"),
        ({"datasets": ["a"], "methods": ["evp"], "base": {"dataset_options": [1]}}, "dataset_options must be a map"),
        (
            {"datasets": ["a"], "methods": ["evp"], "table": {"output": {"a": 1}}},
            r"s.yaml: table: 'output' must be a name",
        ),
        ({"datasets": ["a"], "methods": ["evp"], "table": {"name": None}}, "table: 'name' must be a name or a text"),
        ({"datasets": ["a"], "methods": ["evp"], "table": {"name": "../../x"}}, r"'name' '\.\./\.\./x' must be a file"),
        ({"datasets": ["a"], "methods": ["evp"], "table": {"name": ".."}}, "without / or"),
        (
            {"datasets": ["a"], "methods": ["evp"], "table": {"title": ["a"]}},
            r"'title' must be a name or a text, not \[",
        ),
        ({"datasets": ["a"], "methods": ["evp"], "base": {"output": ["a", "b"]}}, "s.yaml: base: 'output' must be"),
    ],
)
def test_bad_suite_configs(data, needle):
    with pytest.raises(ValueError, match=needle):
        parse_suite(data, source="s.yaml")


def test_a_suite_config_built_in_python_checks_its_table_name_too():
    from vprompt.suite import SuiteConfig

    with pytest.raises(ValueError, match=r"mine: table: 'name' '\.\./x' must be a file name"):
        SuiteConfig(base={}, datasets=["a"], methods=[], seeds=[0], table_name="../x", source="mine")


def test_an_interrupted_run_continues_with_another_precision_a_finished_one_does_not_count(tmp_path):
    from vprompt.suite import _state

    suite = parse_suite({"datasets": ["synthetic"], "methods": ["vp"], "base": {"precision": "bf16"}})
    cell = expand_suite(suite, output=tmp_path)[0]
    run = cell.cfg.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {**cell.cfg.to_dict(), "precision": "fp32"}}))
    (run / "last.pt").write_bytes(b"")
    assert _state(cell)[:2] == ("resume", "")  # as --resume allows: precision is how, not what, a run computes
    (run / "results.json").write_text(FINISHED)
    state, why, _ = _state(cell)
    assert state == "conflict" and "precision='fp32' there, 'bf16' here" in why


def test_a_finished_run_on_another_data_folder_is_not_this_cells_result(tmp_path, monkeypatch):
    from vprompt.suite import _state

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path)

    def cell(data_dir):
        suite = {"datasets": ["imagefolder"], "methods": ["vp"], "base": {"data_dir": data_dir}}
        return expand_suite(parse_suite(suite), output=tmp_path / "runs")[0]

    run = cell("a").cfg.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": cell("a").cfg.to_dict()}))
    (run / "results.json").write_text(FINISHED)
    assert _state(cell("a"))[:2] == ("done", "")
    assert _state(cell(str(tmp_path / "a")))[:2] == ("done", "")  # the same folder, spelled otherwise
    state, why, _ = _state(cell("b"))  # its results are another folder's images
    assert state == "conflict" and "data_dir='a' there, 'b' here" in why


@pytest.mark.parametrize("damage", ["", '{"test', '{"x": 1}', "{}", '{"test": {"acc1": null}}', "\xff"])
def test_a_damaged_results_file_is_a_failed_cell_named_and_the_grid_goes_on(tmp_path, damage, capsys):
    suite = parse_suite(
        {
            "datasets": ["synthetic"],
            "methods": ["zeroshot", "linprobe"],
            "base": {
                "model": TINY_MODEL,
                "device": "cpu",
                "batch_size": 16,
                "dataset_options": {"n_train": 48, "n_test": 24},
            },
        }
    )
    assert not run_suite(suite, output=tmp_path).failed
    damaged = expand_suite(suite, output=tmp_path)[0].cfg.run_dir / "results.json"
    damaged.write_bytes(damage.encode("latin-1"))
    for dry_run in (True, False):
        report = run_suite(suite, output=tmp_path, dry_run=dry_run)
        (failed,) = report.failed
        assert failed.method == "zeroshot" and f"{damaged} is not a finished run's results" in failed.error
        assert "delete it and the run is redone" in failed.error
        assert [r.status for r in report.records if r.method == "linprobe"] == ["done"]  # the rest is tabulated
        assert re.search(r"\| zeroshot \| (–|failed) \|", report.markdown)  # (a dry run marks only what is done)
    assert "1 damaged" in capsys.readouterr().out
    damaged.unlink()  # as the message says: the next rerun redoes it
    assert not run_suite(suite, output=tmp_path).failed and json.loads(damaged.read_text())["test"]["acc1"] >= 0

    settings = next(p for p in map(damaged.with_name, ("config.resumed.yaml", "config.yaml")) if p.exists())  # as read
    saved = settings.read_bytes()
    settings.write_bytes(saved[: len(saved) // 2] + b"\n  a: [")  # cut short in a flow, as an edit may leave it
    (failed,) = run_suite(suite, output=tmp_path, dry_run=True).failed
    assert f"{settings}: not YAML" in failed.error and "delete it to start the run again" in failed.error


def test_a_dry_run_names_each_run_that_cannot_run_by_its_seed_and_shots(tmp_path, capsys):
    suite = parse_suite({"datasets": ["digitz"], "methods": ["evp"], "seeds": [1, 2], "shots": [None, 4]})
    assert "deviation over seeds 1, 2. (k/n)" in run_suite(suite, output=tmp_path, dry_run=True).markdown
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("invalid")]
    named = [line.split("  (")[0].split("invalid", 1)[1].strip() for line in lines]
    assert sorted(named) == sorted(f"evp on digitz, seed {s}{k}" for s in (1, 2) for k in ("", ", 4-shot"))
    rows = parse_suite({"datasets": ["digitz"], "methods": ["evp", {"name": "vp", "seeds": [3]}], "seeds": [1, 2]})
    told = "over the seeds of each row, evp: 1, 2; vp: 3. (k/n)"  # (not the suite's for every row)
    assert told in run_suite(rows, output=tmp_path, dry_run=True).markdown


def test_a_train_fraction_is_labelled_as_such_and_cannot_meet_shots(tmp_path):
    suite = parse_suite({"datasets": ["synthetic"], "methods": ["evp"], "shots": [None, 5],
                         "base": {"train_fraction": 0.05}})  # fmt: skip
    full, five = expand_suite(suite, output=tmp_path)
    assert full.error is None and "shots 5 and train_fraction 0.05 together: give one of them" in five.error
    assert "| evp | 0.05 of train | – | – |" in run_suite(suite, output=tmp_path, dry_run=True).markdown
    per_dataset = parse_suite({"datasets": ["synthetic"], "methods": ["evp"], "shots": [None, 5],
                               "dataset_overrides": {"synthetic": {"train_fraction": 0.1}}})  # fmt: skip
    assert "| evp | 0.1 of train |" in run_suite(per_dataset, output=tmp_path, dry_run=True).markdown
    # without a shots list too (before, the table then did not say the runs saw part of the data), and per dataset
    # where the datasets' fractions differ; the CSV files give it as a column
    only = parse_suite({"datasets": ["synthetic", "digits"], "methods": ["evp", "zeroshot"],
                        "base": {"train_fraction": 0.5, "model": TINY_MODEL},
                        "dataset_overrides": {"digits": {"train_fraction": None}}})  # fmt: skip
    report = run_suite(only, output=tmp_path, dry_run=True)
    assert "| Method | Training data | synthetic | digits | Average |" in report.markdown
    assert "| evp | synthetic: 0.5 of train, digits: full | – | – | – |" in report.markdown
    assert "| zeroshot | full | – | – | – |" in report.markdown  # (it reads no training image)
    write_tables(report.records, only, tmp_path)
    per_run = {(r["method"], r["dataset"]): r["train_fraction"] for r in csv.DictReader(
        (tmp_path / "suite_results.csv").open())}  # fmt: skip
    assert per_run == {("evp", "synthetic"): "0.5", ("evp", "digits"): "", ("zeroshot", "synthetic"): "",
                       ("zeroshot", "digits"): ""}  # fmt: skip
    evp = next(csv.DictReader((tmp_path / "suite_results_table.csv").open()))
    assert (evp["synthetic train_fraction"], evp["digits train_fraction"]) == ("0.5", "")


def test_a_finished_probe_is_judged_by_its_last_sweep_and_only_probes_by_l2_strengths(tmp_path):
    from vprompt.suite import _state

    suite = {"datasets": ["synthetic"], "methods": ["evp", "linprobe"], "base": {"l2_grid": [0.1, 1.0]}}
    cells = expand_suite(parse_suite(suite), output=tmp_path)
    for cell in cells:  # both finished with the suite's settings
        cell.cfg.run_dir.mkdir(parents=True)
        (cell.cfg.run_dir / "config.yaml").write_text(yaml.safe_dump({"config": cell.cfg.to_dict()}))
        (cell.cfg.run_dir / "results.json").write_text(FINISHED)
    assert [_state(c)[0] for c in cells] == ["done", "done"]
    suite["base"]["l2_grid"] = [0.1, 1.0, 10.0]  # another sweep: another probe, the same prompt
    assert [_state(c)[0] for c in expand_suite(parse_suite(suite), output=tmp_path)] == ["done", "conflict"]
    suite["base"]["l2_grid"] = [0.1, 1.0]
    probe = cells[1].cfg  # redone on its features with another sweep (linprobe --resume latest --l2-grid ...)
    redone = {**probe.to_dict(), "l2_grid": [5.0]}
    (probe.run_dir / "config.resumed.yaml").write_text(yaml.safe_dump({"config": redone}))
    assert _state(expand_suite(parse_suite(suite), output=tmp_path)[1])[0] == "conflict"


def test_a_finished_few_shot_run_is_not_the_full_data_cell(tmp_path):
    from vprompt.suite import _state

    cell = expand_suite(parse_suite({"datasets": ["synthetic"], "methods": ["vp"]}), output=tmp_path)[0]
    run = cell.cfg.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {**cell.cfg.to_dict(), "shots": 16}}))
    (run / "results.json").write_text(FINISHED)
    state, why, _ = _state(cell)  # None shots (all the data) is a value, unlike a size left to the model
    assert state == "conflict" and "shots=16 there, None here" in why


def test_untrained_methods_take_only_their_settings_from_the_shared_base(tmp_path, caplog):
    suite = parse_suite({
        "datasets": ["synthetic"], "base": {"epochs": 3, "lr": 1.0, "batch_size": 8, "diversity": "di"},
        "dataset_overrides": {"synthetic": {"epochs": 5}},
        "methods": ["evp", "zeroshot", "linprobe", {"name": "zeroshot", "label": "zs-epochs", "epochs": 2}],
    })  # fmt: skip
    cells = {c.method: c for c in expand_suite(suite, output="out")}
    assert (cells["evp"].cfg.epochs, cells["evp"].cfg.lr, cells["evp"].cfg.diversity) == (5, 1.0, "di")
    for m in ("zeroshot", "linprobe"):  # the shared epochs, lr and diversity are for the prompts
        assert (cells[m].cfg.epochs, cells[m].cfg.batch_size, cells[m].cfg.diversity) == (0, 8, "none"), m
    assert cells["zs-epochs"].cfg.epochs == 2  # an entry's own setting is meant for it (fit refuses it, named)
    assert "linprobe is not using the shared settings (base, dataset_overrides) it has no flag for: diversity, " \
        "epochs, lr" in caplog.text  # fmt: skip
    from vprompt.suite import _state

    probe = expand_suite(suite, output=tmp_path)[2]
    run = probe.cfg.run_dir
    run.mkdir(parents=True)
    saved = {**probe.cfg.to_dict(), "epochs": 50, "lr": 10.0}  # a finished probe given the base's epochs and lr
    (run / "config.yaml").write_text(yaml.safe_dump({"config": saved}))
    (run / "results.json").write_text(FINISHED)
    assert _state(probe)[:2] == ("done", "")  # settings a probe has no use for are no conflict
    # What identifies a probe is what `linprobe --resume latest` compares, which the batch size of the feature
    # extraction is not; a finished probe that swept other L2 strengths is another result.
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {**saved, "batch_size": 4}}))
    assert _state(probe)[:2] == ("done", "")
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {**saved, "l2_grid": [1.0]}}))
    state, why, _ = _state(probe)
    assert state == "conflict" and "l2_grid=[1.0] there, None here" in why
    # a probe redone with these L2 strengths and interrupted (its earlier results set aside) is continued
    (run / "results.json").rename(run / "results.previous.json")
    assert _state(probe)[:2] == ("resume", "")


def test_a_mistyped_model_or_dataset_option_is_an_invalid_run(monkeypatch):
    cells = expand_suite(parse_suite({"datasets": ["synthetic"], "methods": ["vp"], "base": {"model": "ViT-B-23"}}))
    assert cells[0].cfg is None and "(vp on synthetic): unknown model 'ViT-B-23'; did you mean" in cells[0].error
    cells = expand_suite(parse_suite({"datasets": ["nosuch"], "methods": [{"name": "vp", "label": None}]}))
    assert cells[0].cfg is None and "(vp on nosuch): unknown dataset 'nosuch'" in cells[0].error  # (label: null)
    options = {"datasets": ["synthetic"], "methods": ["vp"], "base": {"dataset_options": {"bogus": 1}}}
    cells = expand_suite(parse_suite(options))  # told by a dry run, not found only when the run starts
    assert cells[0].cfg is None and "(vp on synthetic): dataset 'synthetic' has no option 'bogus'" in cells[0].error
    # Sizes the model does not take, told from its config: nothing is built or fetched.
    monkeypatch.setattr("vprompt.backbones.create_backbone", lambda *a, **k: pytest.fail("no model is built"))
    sizes = {"datasets": ["synthetic"], "methods": [{"name": "evp", "model": "cifar:resnet20", "inner_size": 40},
                                                    {"name": "vp", "input_size": 96}]}  # fmt: skip
    cells = expand_suite(parse_suite(sizes))
    assert cells[0].cfg is None and "inner_size 40 must be smaller than input_size 32" in cells[0].error
    assert cells[1].cfg is None and "model 'ViT-B-32', which takes 224-pixel inputs" in cells[1].error
    # A source registered without a checker (its lister gives examples) leaves the name to its factory.
    from vprompt import backbones

    monkeypatch.setitem(backbones._SOURCES, "mine", backbones._Source(lambda n, **k: None, lambda: ["a"], ""))
    suite = {"datasets": ["synthetic"], "methods": ["vp"], "base": {"model": "mine:any-name"}}
    assert expand_suite(parse_suite(suite))[0].cfg.model == "mine:any-name"


def test_empty_dataset_options_are_no_options():
    suite = parse_suite({"datasets": ["synthetic"], "methods": ["vp"], "base": {"dataset_options": None}})
    assert expand_suite(suite)[0].cfg.dataset_options == {}


def test_shipped_suite_config_expands_to_the_paper_grid(tmp_path, capsys):
    suite = load_suite("suite_clip_vitb32")  # shipped with vprompt, found by its name
    assert suite.output == str(Path("runs") / "suite_clip_vitb32")
    assert suite.datasets == PAPER_DATASETS
    assert [m.label for m in suite.methods] == ["evp", "vp", "zeroshot", "linprobe"]
    cells = expand_suite(suite, output=tmp_path)
    assert len(cells) == 12 * 4
    assert {(c.method, c.dataset) for c in cells} == {(m, d) for m in ("evp", "vp", "zeroshot", "linprobe")
                                                      for d in PAPER_DATASETS}  # fmt: skip
    evp = next(c.cfg for c in cells if c.method == "evp" and c.cfg is not None)
    assert (evp.model, evp.pretrained, evp.lr, evp.epochs, evp.inner_size, evp.seed) == (
        "ViT-B-32", "openai", 70.0, 1000, 164, 42)  # fmt: skip
    vp = next(c.cfg for c in cells if c.method == "vp" and c.cfg is not None)
    assert (vp.prompter, vp.lr, vp.prompt_size, vp.optimizer) == ("pad", 40.0, 30, "sgd")
    # Datasets (or methods) not installed yet do not break the listing.
    assert cli.main(["suite", "suite_clip_vitb32", "--dry-run", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "48 runs:" in out and "| linprobe |" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results_as_one_at_a_time(tmp_path, capfd):
    # Spawned workers see only registered datasets, so this grid uses the built-in synthetic one twice.
    config = {
        "base": {"model": TINY_MODEL, "epochs": 1, "batch_size": 16, "log_every": 0, "device": "cpu", "threads": 1,
                 "dataset_options": {"n_train": 48, "n_test": 24}},
        "datasets": ["synthetic"],
        "methods": ["evp", {"name": "vp", "warmup_steps": 2}, {"name": "evp", "label": "evp-di", "diversity": "di"}],
        "seeds": [7],
    }  # fmt: skip
    one = run_suite(parse_suite(config), output=tmp_path / "one", jobs=1, quiet=True)
    two = run_suite(parse_suite(config), output=tmp_path / "two", jobs=2, quiet=True)
    assert [r.status for r in two.records] == ["done"] * 3
    assert [(r.method, r.test_acc1, r.val_acc1) for r in one.records] == [
        (r.method, r.test_acc1, r.val_acc1) for r in two.records
    ]
    assert (tmp_path / "two" / "suite_results.md").read_text() == (tmp_path / "one" / "suite_results.md").read_text()
    # A worker runs several cells one after the other: each run's log must hold its own lines only.
    names = [r.run_dir.split("/")[-1] for r in two.records]
    for name in names:
        log = (tmp_path / "two" / name / "log.txt").read_text()
        mentioned = set(re.findall(r"/two/([\w.-]+)", log))
        assert mentioned == {name}, (name, mentioned)
        assert "] INFO" not in log  # the console's tag is not written to the run's own log
    # On the console, where the runs' lines interleave, each line of a run's process says which run it is.
    err = capfd.readouterr().err
    for i, name in enumerate(names):
        assert re.search(rf"\[{i + 1}/3\] INFO .*/two/{re.escape(name)}\b", err), name

    # --fail-fast stops the grid at a failing run, and the runs in progress and queued with it.
    long = {"name": "evp", "epochs": 10000}
    bad = {"name": "vp", "dataset_options": {"size": 1}}  # fails in its worker, as it builds the data
    config["methods"] = [long, bad, {"name": "evp", "label": "queued"}]
    with pytest.raises(ValueError, match=re.escape("seed 7: dataset synthetic: dataset_options: {size: 1} must be a")):
        run_suite(parse_suite(config), output=tmp_path / "stop", jobs=2, quiet=True, fail_fast=True)
    assert not list((tmp_path / "stop").glob("*/results.json"))  # the 10000-epoch run did not go on to its end

    # A run's process that dies (killed for memory, say) fails that run only: the others run on to their end. One
    # stopped with SIGTERM from outside (a scheduler's stop) unwinds, and is reported as stopped, not as a crash.
    def writes_to(pid, path):
        fds = Path(f"/proc/{pid}/fd")
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())

    def stop(label, how):
        for _ in range(1200):
            logs = list((tmp_path / "died").glob(f"{label}-*/log.txt"))
            if logs and (logs[0].parent / "last.pt").is_file():  # at least one epoch in
                (child,) = [c for c in multiprocessing.active_children() if writes_to(c.pid, logs[0])]
                os.kill(child.pid, how)
                return
            time.sleep(0.1)

    config["methods"] = [{**long, "epochs": 200, "label": label} for label in ("killed", "stopped")] + ["vp"]
    config["base"]["log_every"] = 1
    how = {"killed": signal.SIGKILL, "stopped": signal.SIGTERM}
    stoppers = [threading.Thread(target=stop, args=item) for item in how.items()]
    for stopper in stoppers:
        stopper.start()
    report = run_suite(parse_suite(config), output=tmp_path / "died", jobs=2, quiet=True)
    for stopper in stoppers:
        stopper.join()
    assert [r.status for r in report.records] == ["failed", "failed", "done"]
    assert "the run's process died (exit code -9) before the run ended" in report.records[0].error
    assert "was stopped (SIGTERM) before the run ended; what it wrote is kept" in report.records[1].error
    assert (Path(report.records[1].run_dir) / "last.pt").is_file()  # it unwound, keeping its checkpoint


def test_an_interrupted_suite_says_to_run_it_again(tmp_path, monkeypatch, capsys):
    from vprompt import suite

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "run_suite", interrupted)
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"datasets": ["synthetic"], "methods": ["vp"]}))
    assert cli.main(["suite", str(config)]) == 130
    assert "run the same command again" in capsys.readouterr().err  # not --resume, which suite does not take


def test_suite_jobs_below_one_are_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": TINY_MODEL}, "datasets": ["synthetic"], "methods": ["evp"]}))
    assert cli.main(["suite", str(path), "--jobs", "0", "--output", str(tmp_path / "out")]) == 2
    assert "--jobs 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_finished_run_made_at_a_size_now_left_to_the_model_is_another_run(tmp_path):
    from vprompt.suite import _state

    def grid(**sizes):
        base = {"model": "cifar:resnet20", "epochs": 1, "batch_size": 16, "log_every": 0, "device": "cpu",
                "dataset_options": {"n_train": 32, "n_test": 16}, "l2_grid": [0.01], **sizes}  # fmt: skip
        return parse_suite({"base": base, "datasets": ["synthetic"], "methods": ["evp", "zeroshot", "linprobe", "vp"]})

    made = run_suite(grid(input_size=48), output=tmp_path / "48", quiet=True)
    assert [r.status for r in made.records] == ["done"] * 4, [r.error for r in made.records]
    assert [_state(c)[0] for c in expand_suite(grid(input_size=48), output=tmp_path / "48")] == ["done"] * 4
    # The model's own size is 32: the runs made at 48 are not this grid's, although a size left to the model is
    # compared with nothing while resuming (the saved prompt's shape decides there)
    states = [_state(c) for c in expand_suite(grid(), output=tmp_path / "48")]
    assert [s for s, _, _ in states] == ["conflict"] * 4 and all(
        "input_size=48 there, 32 here" in w for _, w, _ in states
    )
    # runs given the model's own size are the runs of a grid that leaves it to the model (and EVP's sizes follow)
    assert run_suite(grid(input_size=32, inner_size=24), output=tmp_path / "32", quiet=True).records[0].status == "done"
    assert [_state(c)[0] for c in expand_suite(grid(), output=tmp_path / "32")] == ["done"] * 4
    assert _state(expand_suite(grid(inner_size=20), output=tmp_path / "32")[0])[0] == "conflict"


def test_a_run_stopped_before_its_first_checkpoint_is_judged_by_its_config(tmp_path):
    from vprompt.suite import _state

    grid = {"datasets": ["synthetic"], "methods": ["evp"], "base": {"epochs": 2}}
    cell = expand_suite(parse_suite(grid), output=tmp_path)[0]
    cell.cfg.run_dir.mkdir(parents=True)  # what a run writes before its first epoch ends
    (cell.cfg.run_dir / "config.yaml").write_text(yaml.safe_dump({"config": cell.cfg.to_dict()}))
    assert _state(cell)[:2] == ("new", "")  # started again from scratch
    grid["base"]["epochs"] = 1
    state, why, _ = _state(expand_suite(parse_suite(grid), output=tmp_path)[0])
    assert state == "conflict" and "epochs=2 there, 1 here" in why and "delete it or change the output" in why


def test_a_head_replaces_an_earlier_layers_label_map_and_the_other_way_round(tmp_path):
    grid = {"datasets": ["synthetic"], "base": {"model": "cifar:resnet20", "label_map": "flm"},
            "methods": [{"name": "vp", "head": "linear"}, {"name": "evp", "label": "evp-ilm", "label_map": "ilm"}],
            "dataset_overrides": {"synthetic": {"head": "rlm"}}}  # fmt: skip
    linear, ilm = (c.cfg for c in expand_suite(parse_suite(grid), output=tmp_path))
    assert (linear.head, linear.label_map) == ("linear", None) and (ilm.head, ilm.label_map) == ("auto", "ilm")


def test_a_setting_a_run_does_not_use_is_no_difference_and_no_error_when_shared(tmp_path):
    evp = resolve_config({"method": "evp"})
    unused = {**evp.to_dict(), "warmup_steps": 10, "weight_decay": 1e-4, "momentum": 0.5}  # EVP uses none of them
    assert changed_settings(unused, evp) == ""  # a run made with them (as vprompt once allowed) resumes without
    vp = resolve_config({"method": "vp"})
    assert changed_settings({**vp.to_dict(), "warmup_steps": 10}, vp) == "warmup_steps=10 there, 1000 here"
    probe = resolve_config({"method": "linprobe", "l2_grid": [1e-4, 1e-2, 1]})
    saved = {**probe.to_dict(), "l2_grid": ["1e-4", "1e-2", 1, 1]}  # as YAML reads 1e-4, and swept as a set
    assert changed_settings(saved, probe, ("l2_grid",)) == ""
    # A suite's shared setting goes to the methods that use it; a method entry's own is refused
    grid = {"datasets": ["synthetic"], "base": {"weight_decay": 1e-4, "inner_size": 48}, "methods": ["evp", "vp"]}
    evp_cell, vp_cell = expand_suite(parse_suite(grid))
    assert (evp_cell.cfg.weight_decay, evp_cell.cfg.inner_size) == (0.0, 48)  # what the run uses, as it records it
    assert (vp_cell.cfg.weight_decay, vp_cell.cfg.inner_size) == (1e-4, None)
    for cell in (evp_cell, vp_cell):  # so that its saved config, given back as a config file, is this run again
        assert resolve_config(cell.cfg.to_dict()) == cell.cfg
    # ... also the config.yaml of a cell run before, which holds them: they were not the run's
    saved = tmp_path / "config.yaml"
    for cell, unused in ((evp_cell, {"weight_decay": 1e-4}), (vp_cell, {"inner_size": 48})):
        saved.write_text(yaml.safe_dump({"config": {**cell.cfg.to_dict(), **unused}, "argv": ["vprompt", "suite"]}))
        assert resolve_config(load_yaml(saved)) == cell.cfg
    grid["methods"] = [{"name": "evp", "weight_decay": 1e-4}]
    assert "weight_decay 0.0001: the normalized gradient has none" in expand_suite(parse_suite(grid))[0].error


def test_parallel_runs_fetch_each_dataset_once_a_spelled_out_default_included(monkeypatch):
    import vprompt.data
    from vprompt.config import RunConfig
    from vprompt.suite import _fetch_data_once

    fetched = []
    monkeypatch.setattr(vprompt.data, "create_dataset", lambda name, root, split, **kw: fetched.append((split, kw)))
    same = [RunConfig(dataset="synthetic", download=True, dataset_options=o) for o in ({}, {"seed": 0})]
    _fetch_data_once([*same, RunConfig(dataset="synthetic", download=True, dataset_options={"seed": 1})])
    assert fetched == [(s, {"download": True, **o}) for o in ({}, {"seed": 1}) for s in ("train", "test")]


@pytest.mark.slow
def test_the_runs_of_a_suite_killed_outright_stop_and_stay_resumable(tmp_path):
    import fcntl
    import subprocess
    import sys

    from vprompt.runs import LOCK_FILE

    config = {
        "base": {"model": TINY_MODEL, "epochs": 10000, "batch_size": 16, "log_every": 0, "device": "cpu", "threads": 1,
                 "dataset_options": {"n_train": 48, "n_test": 24}, "output": str(tmp_path / "runs")},
        "datasets": ["synthetic"],
        "methods": ["evp", {"name": "vp", "warmup_steps": 2}],
        "seeds": [7],
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(config))
    with open(tmp_path / "console.txt", "w") as console:
        suite = subprocess.Popen([sys.executable, "-m", "vprompt", "suite", str(path), "--jobs", "2"],
                                 stdout=console, stderr=console)  # fmt: skip
        try:
            for _ in range(1200):
                if len(list((tmp_path / "runs").glob("*/last.pt"))) == 2:  # both runs an epoch in
                    break
                time.sleep(0.1)
            else:
                pytest.fail((tmp_path / "console.txt").read_text())
        finally:
            suite.kill()  # SIGKILL: the suite's process cannot stop its runs
            suite.wait()
    for run in (tmp_path / "runs").glob("*-seed7"):
        with open(run / LOCK_FILE, "a") as lock:
            for _ in range(300):  # the run's process lets go of its folder once it has stopped
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.1)
            else:
                pytest.fail(f"{run.name} runs on after its suite was killed")
        assert (run / "last.pt").is_file() and not (run / "results.json").exists()


def test_an_inner_size_meant_for_evp_leaves_vps_border_alone():
    from vprompt.suite import _cell_settings

    suite = parse_suite({"base": {"model": TINY_MODEL, "prompt_size": 4}, "datasets": ["synthetic"],
                         "methods": ["vp", "evp"], "dataset_overrides": {"synthetic": {"inner_size": 40}}})  # fmt: skip
    vp, evp = (_cell_settings(suite, "synthetic", m) for m in suite.methods)
    assert vp["prompt_size"] == 4  # VP's border, not EVP's size
    assert evp["inner_size"] == 40 and "prompt_size" not in evp  # EVP's border: what the shrunk image leaves


def test_a_row_with_a_cell_missing_seeds_gets_no_average(tmp_path, monkeypatch):
    # vp on d1 has 2 of its 3 seeds; every other cell is complete. An average over the finished seeds alone would
    # compare vp with evp on other runs, so vp's row gives none, and evp's is the mean of its per-dataset means.
    for name in ("d1", "d2"):
        monkeypatch.setitem(data_registry._REGISTRY, name, DatasetSpec(name=name, builder=synthetic_dataset))
    accs = {(m, d, s): 40.0 + 7 * (m == "vp") + 3 * (d == "d2") + s for m in ("evp", "vp") for d in ("d1", "d2")
            for s in (1, 2, 3)}  # fmt: skip
    report = run_suite(_small_suite(tmp_path), fit=_fake_fit(accs, fail={("vp", "d1", 3)}), quiet=True)
    md = report.markdown
    vp1 = [accs["vp", "d1", s] for s in (1, 2)]
    vp2 = [accs["vp", "d2", s] for s in (1, 2, 3)]
    partial = f"{statistics.mean(vp1):.2f} ± {statistics.stdev(vp1):.2f} (2/3)"
    assert f"| vp | {partial} | {statistics.mean(vp2):.2f} ± {statistics.stdev(vp2):.2f} | – |" in md
    evp = [statistics.mean(accs["evp", d, s] for s in (1, 2, 3)) for d in ("d1", "d2")]
    assert re.search(rf"\| evp \| .* \| {statistics.mean(evp):.2f} \|", md)
    with open(tmp_path / "suite_results_table.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert table["vp"]["Average"] == "" and table["vp"]["d1 n"] == "2"
    assert float(table["evp"]["Average"]) == pytest.approx(statistics.mean(evp))


def test_dataset_options_are_merged_key_by_key_across_base_overrides_and_entries():
    suite = parse_suite({
        "base": {"model": TINY_MODEL, "dataset_options": {"n_train": 48, "n_test": 24}},
        "datasets": ["synthetic"],
        "dataset_overrides": {"synthetic": {"dataset_options": {"n_test": 12, "num_classes": 4}}},
        "methods": ["evp", {"name": "vp", "dataset_options": {"num_classes": 3}}],
        "seeds": [1],
    })  # fmt: skip
    options = {c.method: c.cfg.dataset_options for c in expand_suite(suite, output="out")}
    # Each layer replaces only the options it names: the base's n_train stays, the dataset's n_test wins over the
    # base's, and the entry's num_classes over the dataset's.
    assert options["evp"] == {"n_train": 48, "n_test": 12, "num_classes": 4}
    assert options["vp"] == {"n_train": 48, "n_test": 12, "num_classes": 3}


@pytest.mark.parametrize(("setting", "there"), [("split_seed", 3), ("val_fraction", 0.2)])
def test_a_finished_run_on_another_validation_split_is_not_this_cells_result(tmp_path, setting, there):
    from vprompt.suite import _state

    cell = expand_suite(parse_suite({"datasets": ["synthetic"], "methods": ["vp"]}), output=tmp_path)[0]
    run = cell.cfg.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": cell.cfg.to_dict()}))
    (run / "results.json").write_text(FINISHED)
    assert _state(cell)[0] == "done"
    # The run name does not say which images were held out: the saved settings do.
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {**cell.cfg.to_dict(), setting: there}}))
    state, why, _ = _state(cell)
    assert state == "conflict" and f"{setting}={there!r} there, {getattr(cell.cfg, setting)!r} here" in why


def test_a_grid_with_deterministic_runs_fixes_cublas_before_its_first_run(tmp_path, monkeypatch):
    # PyTorch reads the variable at the process's first GPU matrix product, which may be an earlier run's
    for name in ("d1", "d2"):
        monkeypatch.setitem(data_registry._REGISTRY, name, DatasetSpec(name=name, builder=synthetic_dataset))
    accs = {(m, d, s): 50.0 for m in ("evp", "vp") for d in ("d1", "d2") for s in (1, 2, 3)}
    for deterministic, expected in ((False, None), (True, ":4096:8")):
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        seen = []

        def fit(cfg, seen=seen):
            seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
            return _fake_fit(accs)(cfg)

        base = {"output": str(tmp_path / str(deterministic)), "deterministic": deterministic}
        run_suite(_small_suite(tmp_path, base=base), fit=fit)
        assert seen == [expected] * 12


def test_a_failed_runs_tensors_are_freed_before_the_next_run(tmp_path, monkeypatch):
    """A failed run's error, traceback and all, holds the run's frames and their tensors (on a GPU, its model and
    data): the next run starts after they are gone, not beside them."""
    import gc
    import weakref

    import torch

    for name in ("d1", "d2"):
        monkeypatch.setitem(data_registry._REGISTRY, name, DatasetSpec(name=name, builder=synthetic_dataset))
    held: list[weakref.ref] = []
    alive_at_start = []

    def fit(cfg):
        gc.collect()
        alive_at_start.append([ref() is not None for ref in held])
        model = torch.zeros(8)  # what the failing run held when it failed
        held.append(weakref.ref(model))
        raise ValueError(f"run {len(held)} failed")

    report = run_suite(_small_suite(tmp_path, methods=["evp"], seeds=[1], datasets=["d1", "d2"]), fit=fit, quiet=True)
    assert len(report.failed) == 2
    assert alive_at_start == [[], [False]]
