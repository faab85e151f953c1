"""`vprompt demo` end to end on a tiny budget: real CIFAR-10 ResNet weights, a small slice of the real digits."""

import json

import pytest
import torch
import yaml
from PIL import Image

from vprompt import cli
from vprompt.demo import ARM_DOCS, _sources, _suite, demo_arms

from .conftest import shared_data


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """400 training and 200 test digits of the real MNIST files, in IDX format, beside the real checkpoints."""
    src = shared_data()
    if not (src / "mnist").is_dir() or not (src / "cifar10_resnets").is_dir():
        pytest.skip("../shared/data with mnist/ and cifar10_resnets/ is not available")
    from vprompt.data.idx import read_idx, write_idx

    root = tmp_path_factory.mktemp("demo_data")
    (root / "mnist").mkdir()
    for part, n in (("train10k", 400), ("t10k", 200)):
        for kind in ("images-idx3", "labels-idx1"):
            arr = read_idx(src / "mnist" / f"{part}-{kind}-ubyte.gz")[:n]
            write_idx(root / "mnist" / f"{part}-{kind}-ubyte.gz", arr)
    (root / "cifar10_resnets").symlink_to(src / "cifar10_resnets")
    return root


def test_demo_settings_reach_every_arm(small_data, tmp_path, caplog):
    """The command line's budget, precision and seed are those of every run the demo starts."""
    from vprompt.suite import expand_suite

    args = cli.build_parser().parse_args(
        ["demo", "--data-dir", str(small_data), "--output", str(tmp_path), "--epochs", "2", "--precision", "bf16"]
    )
    settings = cli.demo_settings(args)
    cells = expand_suite(_suite(settings, _sources(args.data_dir), tmp_path))
    assert [c.method for c in cells] == [a["label"] for a in demo_arms(settings, warmup_steps=1)]
    assert all(c.error is None for c in cells)
    trained = [c.cfg for c in cells if c.cfg.epochs]
    assert len(trained) == 5 and all(cfg.epochs == 2 for cfg in trained)
    assert {(cfg.precision, cfg.seed, cfg.batch_size) for cfg in (c.cfg for c in cells)} == {("bf16", 42, 32)}
    assert "not using" not in caplog.text  # the demo's shared settings are those of every arm


@pytest.mark.slow
def test_demo_runs_every_arm_and_writes_its_report(small_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--epochs", "1", "-b", "64"]
    args += ["--adamw-lr", "0.3"]  # and the optional evp-adamw arm
    monkeypatch.chdir(small_data.parent)  # the data given relative to here, as make demo gives ../shared/data
    assert cli.main([*args, "--data-dir", small_data.name]) == 0
    printed = capsys.readouterr().out
    report = (out / "results.md").read_text()
    assert "trained on 359 training digits, 41 more held out for validation" in report  # stratified
    assert "tested on 200 MNIST test digits" in report
    for arm in ARM_DOCS:
        assert f"| {arm} |" in report and f"| {arm} |" in printed
    for arm in ("vp", "evp-plain", "evp-diversity", "evp-normgrad", "evp", "evp-adamw"):
        with Image.open(out / f"prompt_{arm}.png") as img:
            assert img.format == "PNG" and img.width > img.height  # the prompt beside a prompted digit
    adamw, vp = (
        yaml.safe_load((out / "runs" / _run_name(a) / "config.yaml").read_text())["config"] for a in ("evp-adamw", "vp")
    )
    assert (adamw["method"], adamw["optimizer"], adamw["lr"], adamw["diversity"]) == ("evp", "adamw", 0.3, "none")
    assert (adamw["schedule"], adamw["warmup_steps"]) == ("cosine", vp["warmup_steps"]) and vp["warmup_steps"] > 0
    with Image.open(out / "curves.png") as img:
        assert img.format == "PNG"

    # The no-prompt identity arm is the frozen ResNet read as digits: recompute it independently.
    results = {a: json.loads((out / "runs" / _run_name(a) / "results.json").read_text()) for a in ARM_DOCS}
    from vprompt.cifar_resnet import create_cifar_resnet
    from vprompt.data import create_dataset
    from vprompt.prompters import resize_square

    test = create_dataset("mnist", small_data / "mnist", "test")
    net = create_cifar_resnet(20, small_data / "cifar10_resnets").eval()
    x = resize_square(test.images.float().div(255).expand(-1, 3, -1, -1), 32)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        pred = net((x - mean) / std).argmax(-1)
    expected = 100 * (pred == test.targets).float().mean().item()
    assert results["identity"]["test"]["acc1"] == pytest.approx(expected, abs=1e-6)
    assert results["identity"]["test"]["n"] == 200
    assert all(results[a]["epochs"] == 1 for a in ("vp", "evp")) and results["flm"]["epochs"] == 0

    # A second demo, from elsewhere, finds every arm finished and only rewrites the report and images.
    before = {a: (out / "runs" / _run_name(a) / "results.json").stat().st_mtime_ns for a in ARM_DOCS}
    monkeypatch.chdir(tmp_path)
    args += ["--data-dir", str(small_data)]
    assert cli.main(args) == 0
    assert before == {a: (out / "runs" / _run_name(a) / "results.json").stat().st_mtime_ns for a in ARM_DOCS}

    # A finished arm's damaged files: a metrics file only costs its curve; a prompt file is named, with the way out.
    vp_run = out / "runs" / _run_name("vp")
    with open(vp_run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "val_acc1": 3')
    assert cli.main(args) == 0
    assert f"{vp_run / 'metrics.jsonl'} is damaged" in capsys.readouterr().err
    (vp_run / "prompt.safetensors").write_bytes(b"garbage")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"demo arm vp: {vp_run / 'prompt.safetensors'}" in err and f"delete {vp_run} and run the demo again" in err

    # Another budget in the same folder is refused in one line, not trained over the earlier arms.
    capsys.readouterr()
    assert cli.main([a if a != "1" else "2" for a in args]) == 2  # --epochs 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "another --output" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["-b", "0"], "--batch-size 0 must be a whole number, at least 1"),
        (["--inner-size", "40"], "smaller than --input-size 32"),
        (["--inner-size", "31"], "by an even number"),
        (["--vp-lr", "nan"], "--vp-lr nan must be a positive finite number"),
        (["--normgrad-lr", "-5"], "--normgrad-lr -5.0 must be a positive finite number"),
        (["--device", "meta"], "--device meta: runs train on cpu, cuda, mps, xpu, not meta"),
    ],
)
def test_impossible_demo_settings_fail_in_one_line(tmp_path, capsys, flags, needle):
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), *flags]) == 2
    assert needle in capsys.readouterr().err


def test_a_demo_arm_that_cannot_get_its_files_points_to_the_demos_own_flag(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    from vprompt import demo, suite
    from vprompt.config import in_file_terms
    from vprompt.suite import RunRecord, SuiteReport

    def offline(*args, **kwargs):  # (whether or not this machine is: no test downloads MNIST)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    read_mnist = demo.train_size
    monkeypatch.setattr(demo, "train_size", lambda mnist_dir: 9001)  # (MNIST is read before the arms run)
    # an arm's error as the suite gives it: in its file's terms (pretrained PATH), where the demo's hint was left out
    error = "FileNotFoundError: could not get the weights of ... if you are offline, pass --pretrained PATH ..."
    failed = RunRecord("identity", None, "mnist", 42, "failed", error=in_file_terms(error))
    assert "pass pretrained PATH" in failed.error
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: SuiteReport([failed], "", []))
    assert cli.main(["demo", "--output", str(tmp_path / "demo")]) == 2
    assert "both come from its own --data-dir DIR (the ResNets in DIR/cifar10_resnets" in capsys.readouterr().err
    error = "ValueError: w.th is the ResNet-32 checkpoint ...: give the ResNet-20 weights as --pretrained, or "
    failed.error = in_file_terms(error + "train with --model cifar:resnet32")  # the demo's: --data-dir and --depth
    assert cli.main(["demo", "--output", str(tmp_path / "demo")]) == 2
    told = "in place of the weights and data settings named above (and --depth N for --model cifar:resnetN)"
    assert told in capsys.readouterr().err
    failed.error = in_file_terms("OSError: the model's weights could not be read; pass --pretrained PATH")
    assert cli.main(["demo", "--output", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err  # (no CIFAR model named: the word alone asks no --depth)
    assert "in place of the weights and data settings named above" in err and "--depth" not in err

    mnist_only = tmp_path / "idx"  # the IDX folder itself, as a user might pass it: MNIST found, the ResNets not
    mnist_only.mkdir()
    monkeypatch.setattr(demo, "train_size", read_mnist)
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--data-dir", str(mnist_only)]) == 2
    err = capsys.readouterr().err  # MNIST is missing there too: its download fails, and says what the demo takes
    assert "dataset mnist" in err and "both come from its own --data-dir DIR" in err


def test_a_demo_data_folder_that_does_not_exist_is_named_and_nothing_is_written(tmp_path, capsys):
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--data-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"vprompt demo: error: --data-dir {tmp_path / 'nope'} does not exist: give the folder that holds "
        "cifar10_resnets/ and mnist/, or leave the flag out to download them"
    )
    assert not (tmp_path / "demo").exists()


def _run_name(arm: str) -> str:
    return f"{arm}-cifar-resnet20-mnist-seed42"


def test_the_demo_runs_one_arm_per_core_it_may_use(monkeypatch):
    import os

    from vprompt.demo import default_jobs

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's cores; this process may use two of them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    assert (default_jobs("cpu"), default_jobs("cuda")) == (2, 1)
    monkeypatch.delattr(os, "sched_getaffinity")  # where the OS does not say (macOS, Windows): every core
    assert default_jobs("cpu") == 5  # (at most the five trained arms)


def test_a_second_demo_in_the_same_folder_is_refused_at_once(small_data, tmp_path, capsys, monkeypatch):
    import fcntl

    from vprompt import suite

    out = tmp_path / "demo"
    out.mkdir()
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: pytest.fail("no arm starts"))
    with open(out / ".lock", "a") as held:  # as a demo running there holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(["demo", "--output", str(out), "--data-dir", str(small_data), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"demo folder {out} is in use" in err and "give this demo another --output" in err


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_curves_of_a_short_demo_are_ticked_at_whole_epochs(tmp_path, monkeypatch, epochs):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from vprompt import demo

    runs = {}
    for arm in ("vp", "evp"):
        runs[arm] = tmp_path / arm
        runs[arm].mkdir()
        rows = [{"epoch": e, "val_acc1": 50.0 + e} for e in range(1, epochs + 1)]
        (runs[arm] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), real_close(fig)))
    demo._plot_curves(tmp_path, runs, {})
    axes = figures[0].axes[0]
    low, high = axes.get_xlim()
    ticks = [t for t in axes.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert (tmp_path / "curves.png").is_file()
