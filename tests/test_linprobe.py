"""The linear-probe baseline: logistic regression, L2 selection on validation, cached features, the run folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from vprompt import cli, linprobe
from vprompt.config import list_methods, resolve_config
from vprompt.engine import fit
from vprompt.linprobe import probe_metrics, sweep_l2, train_logistic_regression

from .conftest import TINY_MODEL


def _separable(n: int, seed: int, classes: int = 3, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Points whose class is the argmax of a fixed linear map: linearly separable by construction."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    x = torch.randn(n, dim, generator=gen) * 3 + 1.5
    return x, (x @ w.t()).argmax(-1)


def test_logistic_regression_separates_linearly_separable_features():
    x, y = _separable(600, 0)
    mean, std = x.mean(0), x.std(0)
    xs = (x - mean) / std
    weight, bias, iters = train_logistic_regression(xs, y, 3, l2=1e-5)
    assert iters > 0 and weight.shape == (3, 8) and bias.shape == (3,)
    assert probe_metrics(xs @ weight.t() + bias, y)["acc1"] == 100.0
    xt, yt = _separable(300, 1)
    assert probe_metrics(((xt - mean) / std) @ weight.t() + bias, yt)["acc1"] >= 97.0
    # A huge penalty shrinks the weights to (almost) nothing: the penalty is really applied.
    strong, _, _ = train_logistic_regression(xs, y, 3, l2=1e3)
    assert strong.norm() < 0.05 * weight.norm()


def test_a_warm_started_weak_penalty_fit_reaches_the_minimum_on_few_separable_points():
    # a few-shot probe: at a weak penalty the loss is ~1e-4, where float32 and an absolute gradient tolerance
    # stopped the fit after a few iterations, 10-70 % above the minimum
    x, y = _separable(40, 0, classes=10, dim=64)
    xs = (x - x.mean(0)) / x.std(0)

    x64 = xs.double()

    def objective(weight, bias, l2):
        return F.cross_entropy(x64 @ weight.double().t() + bias.double(), y) + 0.5 * l2 * weight.double().pow(2).sum()

    state = None
    for l2 in (1e-2, 1e-3, 1e-4, 1e-5, 3.2e-6, 1e-6):  # strongest first, as the sweep visits them
        state = train_logistic_regression(xs, y, 10, l2, init=state)[:2]
        if l2 > 1e-5:
            continue
        best = [torch.zeros(10, 64, dtype=torch.float64, requires_grad=True),
                torch.zeros(10, dtype=torch.float64, requires_grad=True)]  # fmt: skip
        opt = torch.optim.LBFGS(best, max_iter=5000, tolerance_grad=1e-12, tolerance_change=1e-16,
                                history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

        def closure(l2=l2, best=best, opt=opt):
            opt.zero_grad()
            loss = objective(*best, l2)
            loss.backward()
            return loss

        opt.step(closure)
        assert objective(*state, l2).item() == pytest.approx(objective(*best, l2).item(), rel=1e-4), l2


def test_sweep_selects_on_validation_and_prefers_stronger_penalty_on_ties():
    train, val = _separable(300, 0), _separable(200, 1)
    probe, sweep = sweep_l2(train, val, 3, grid=[1e-4, 1e2, 1e-1])
    assert [r["l2"] for r in sweep] == [1e2, 1e-1, 1e-4]  # strongest first (warm starts)
    best = max(r["val_acc1"] for r in sweep)
    assert probe.l2 == next(r["l2"] for r in sweep if r["val_acc1"] == best)
    assert sweep[0]["val_acc1"] < best  # l2=100 underfits
    assert probe_metrics(probe.logits(val[0]), val[1])["acc1"] == best
    # Identical validation scores: the first (strongest) of them wins.
    probe2, sweep2 = sweep_l2(train, (val[0][:0], val[1][:0]), 3, grid=[1e-3, 1e-1])
    assert {r["val_acc1"] for r in sweep2} == {0.0} and probe2.l2 == 1e-1


def test_a_constant_feature_is_left_at_zero_not_divided_by_zero():
    # a ReLU unit that never fires is a column of zeros: standardizing it must not turn the features into NaN
    (x, y), (xv, yv) = _separable(200, 0), _separable(100, 1)

    def dead(t):
        return torch.cat([t, torch.zeros(len(t), 1)], 1)

    probe, sweep = sweep_l2((dead(x), y), (dead(xv), yv), 3, grid=[1e-2])
    assert torch.isfinite(probe.logits(dead(xv))).all()
    _, alive = sweep_l2((x, y), (xv, yv), 3, grid=[1e-2])
    assert sweep[0]["val_acc1"] == alive[0]["val_acc1"] > 90


def test_each_strength_of_the_sweep_starts_from_the_previous_solution(monkeypatch):
    real, starts, ends = linprobe.train_logistic_regression, [], []

    def recorded(*args, init=None, **kwargs):
        starts.append(init)
        out = real(*args, init=init, **kwargs)
        ends.append(out[:2])
        return out

    monkeypatch.setattr(linprobe, "train_logistic_regression", recorded)
    sweep_l2(_separable(100, 0), _separable(50, 1), 3, grid=[1e-3, 1e-1, 1.0])
    assert starts[0] is None and len(starts) == 3
    for start, previous in zip(starts[1:], ends[:-1], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(start, previous, strict=True))


def test_the_default_sweep_is_half_decades_from_1e_minus_6_to_1e2():
    grid = linprobe.DEFAULT_L2_GRID
    assert len(grid) == 17 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e2)
    assert all(b / a == pytest.approx(10**0.5) for a, b in zip(grid, grid[1:]))


def test_a_small_fit_gives_the_threads_back():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train_logistic_regression(*_separable(50, 0), 3, l2=1e-2)  # small: fitted on one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_sweep_needs_a_validation_split_unless_the_strength_is_fixed():
    train = _separable(100, 0)
    with pytest.raises(ValueError, match="--val-fraction 0"):
        sweep_l2(train, None, 3, grid=[1e-3, 1e-2])
    probe, _ = sweep_l2(train, None, 3, grid=[1e-3])
    assert probe.l2 == 1e-3
    with pytest.raises(ValueError, match="non-negative"):
        sweep_l2(train, None, 3, grid=[-1.0])


def _args(tmp_path, *extra):
    return [
        "linprobe", "--model", TINY_MODEL, "--dataset", "synthetic", "--dataset-option", "n_train=120",
        "--dataset-option", "n_test=60", "--l2-grid", "1e-4,1e-2,1", "--output", str(tmp_path), "--name", "lp",
        *extra,
    ]  # fmt: skip


def test_linprobe_run_folder_results_and_feature_cache(tmp_path, monkeypatch, capsys):
    assert cli.main(_args(tmp_path)) == 0
    assert "L2" in capsys.readouterr().out
    run = tmp_path / "lp"
    for name in (
        "config.yaml",
        "log.txt",
        "metrics.jsonl",
        "results.json",
        "features.safetensors",
        "probe.safetensors",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "linprobe" and results["model"] == TINY_MODEL and results["selection"] == "val"
    assert results["test"]["n"] == 60 and results["val"]["n"] + results["n_train"] == 120
    assert results["l2"] in (1e-4, 1e-2, 1.0) and [r["l2"] for r in results["sweep"]] == [1.0, 1e-2, 1e-4]
    assert results["feature_dim"] == 64  # the tiny CLIP ViT's width, before its projection to 32
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    # The saved probe is the selected one, whole: applied to the cached test features it gives the reported accuracy.
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(run / "probe.safetensors"), framework="pt") as f:
        meta = f.metadata()
    saved = linprobe.LinearProbe(**load_file(str(run / "probe.safetensors")), l2=float(meta["l2"]))
    assert saved.l2 == results["l2"] and len(json.loads(meta["classnames"])) == len(saved.bias)
    features = load_file(str(run / "features.safetensors"))
    assert probe_metrics(saved.logits(features["test_x"]), features["test_y"])["acc1"] == results["test"]["acc1"]

    # A finished run is not overwritten by accident...
    assert cli.main(_args(tmp_path)) == 2
    # ... and --resume latest redoes the probe from the cached features without touching the backbone.
    monkeypatch.setattr(linprobe, "extract_features", lambda *a, **k: pytest.fail("features must come from cache"))
    assert cli.main(_args(tmp_path, "--resume", "latest")) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["test"] == results["test"] and again["l2"] == results["l2"]
    assert cli.main(_args(tmp_path, "--resume", "latest", "--l2-grid", "1e-3")) == 0  # another sweep, same features
    assert json.loads((run / "results.json").read_text())["l2"] == 1e-3
    assert cli.main(_args(tmp_path, "--resume", "latest")) == 0
    again = json.loads((run / "results.json").read_text())

    # Another run's settings are refused, not written over this one...
    capsys.readouterr()
    assert cli.main(_args(tmp_path, "--resume", "latest", "--dataset-option", "n_train=100")) == 2
    assert "holds a run with other settings (dataset_options=" in capsys.readouterr().err
    assert json.loads((run / "results.json").read_text()) == again

    # ... and features computed otherwise (another precision) are not reused.
    class Recomputed(Exception):
        pass

    def recompute(*args, **kwargs):
        raise Recomputed

    monkeypatch.setattr(linprobe, "extract_features", recompute)
    with pytest.raises(Recomputed):
        cli.main(_args(tmp_path, "--resume", "latest", "--precision", "bf16"))
    with pytest.raises(Recomputed):  # nor images read from another folder
        cli.main(_args(tmp_path, "--resume", "latest", "--data-dir", str(tmp_path / "elsewhere")))


def test_a_probe_stopped_after_its_features_is_continued_on_them_and_not_taken_over(tmp_path, monkeypatch, capsys):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(linprobe, "sweep_l2", stopped)
    assert cli.main(_args(tmp_path)) == 130
    run = tmp_path / "lp"
    assert (run / "features.safetensors").is_file() and not (run / "results.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(_args(tmp_path, "--dataset-option", "n_train=100")) == 2  # would write over its features
    assert f"run folder {run} already holds an unfinished run; pass --resume latest" in capsys.readouterr().err
    monkeypatch.setattr(linprobe, "extract_features", lambda *a, **k: pytest.fail("features must come from cache"))
    assert cli.main(_args(tmp_path, "--resume", "latest")) == 0 and (run / "results.json").is_file()


def test_the_feature_cache_knows_the_labels_and_the_weights_file(tmp_path, monkeypatch):
    from vprompt.data import ArrayDataset, DataSplits, FileDataset

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)

    def splits(train_labels):
        train = ArrayDataset(images, train_labels, ["a", "b"])
        return DataSplits(train, None, ArrayDataset(images, [0, 1, 0, 1], ["a", "b"]), ["a", "b"])

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    cfg = resolve_config({"method": "linprobe", "pretrained": str(weights), "output": str(tmp_path)})
    key = linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))
    assert key == linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))
    assert key != linprobe._cache_key(cfg, 32, splits([1, 1, 0, 0]))  # same folder and sizes, other images
    images[0, 0, 0, 0] = 1  # one pixel of MNIST's train file edited: other images with the same labels
    assert key != linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))
    images[0, 0, 0, 0] = 0
    monkeypatch.chdir(tmp_path)  # the same file written another way (as --resume latest takes it): the same features
    relative = resolve_config({"method": "linprobe", "pretrained": "./w.safetensors", "output": str(tmp_path)})
    assert linprobe._cache_key(relative, 32, splits([0, 0, 1, 1])) == key
    weights.write_bytes(b"other weights")
    assert key != linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))

    def files(*names):  # images decoded from files: their names count, not only their labels
        train = FileDataset([(str(tmp_path / "img" / n), 0) for n in names], ["a", "b"])
        return DataSplits(train, None, None, ["a", "b"])

    assert linprobe._cache_key(cfg, 32, files("1.png", "2.png")) != linprobe._cache_key(
        cfg, 32, files("1.png", "3.png")
    )
    assert "pixels" not in linprobe._cache_key(cfg, 32, files("1.png"))  # (a cache of files made before stays valid)

    folder = tmp_path / "weights"  # a classifier's --pretrained may name the folder its file is in
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    timm = {"method": "linprobe", "model": "timm:test_resnet", "output": str(tmp_path)}
    cfg = resolve_config({**timm, "pretrained": str(folder)})
    key = linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert key != linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))

    # a tag names the weights even beside a folder of its name (a dataset's ./cifar10): the folder is not read
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "data_batch_1").write_bytes(b"images")
    for model, tag in (("cifar:resnet20", "cifar10"), ("timm:test_resnet", "default"), ("ViT-B-32", "openai")):
        (tmp_path / tag).mkdir(exist_ok=True)
        cfg = resolve_config({**timm, "model": model, "pretrained": tag})
        key = linprobe._cache_key(cfg, 32, splits([0, 0, 1, 1]))
        assert key["weights_file"] is None and key["pretrained"] == tag


def test_linprobe_through_fit_on_a_classifier_uses_penultimate_features(tmp_path):
    cfg = resolve_config({
        "method": "linprobe", "model": "cifar:resnet20", "dataset": "synthetic", "input_size": 16,
        "dataset_options": {"n_train": 80, "n_test": 40}, "l2_grid": [1e-2], "output": str(tmp_path), "name": "c",
    })  # fmt: skip
    assert cfg.prompter == "none" and cfg.epochs == 0
    results = fit(cfg)
    assert results["feature_dim"] == 64 and results["test"]["n"] == 40
    assert "linprobe" in list_methods()


def test_linprobe_resume_ignores_settings_a_probe_does_not_use(tmp_path, vprompt_caplog):
    assert cli.main(["train", "--method", "linprobe", "-b", "64", *_args(tmp_path)[1:]]) == 0
    assert cli.main([*_args(tmp_path), "-b", "32", "--resume", "latest"]) == 0  # the batch changes no feature
    # its own saved config given back: nothing in it is told as left out (its method, a default spelled out)
    vprompt_caplog.clear()
    assert cli.main(["linprobe", "-c", str(tmp_path / "lp" / "config.yaml"), "--name", "again"]) == 0
    assert "not using the settings" not in vprompt_caplog.text


def test_linprobe_saves_its_input_size_and_resumes_only_at_it(tmp_path, capsys):
    args = [*_args(tmp_path), "--model", "cifar:resnet20", "--pretrained", "none"]  # a model of any input size
    assert cli.main(args) == 0
    saved = yaml.safe_load((tmp_path / "lp" / "config.yaml").read_text())["config"]
    assert saved["input_size"] == 32  # the model's own size, saved as it came out
    capsys.readouterr()
    assert cli.main([*args, "--input-size", "16", "--resume", "latest"]) == 2  # features of another size
    assert "input_size=32 there, 16 here" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["linprobe", "zeroshot"])
def test_a_run_without_training_state_redone_without_its_size_is_refused(tmp_path, capsys, command):
    # Made at 16, redone with the size left to the model (32): compared once the size is resolved, not skipped
    args = [command, *_args(tmp_path)[1:], "--model", "cifar:resnet20", "--pretrained", "none"]
    if command == "zeroshot":
        args = [a for a in args if a not in ("--l2-grid", "1e-4,1e-2,1")]
    assert cli.main([*args, "--input-size", "16"]) == 0
    results = (tmp_path / "lp" / "results.json").read_text()
    capsys.readouterr()
    assert cli.main([*args, "--resume", "latest"]) == 2
    assert "input_size=16 there, 32 here" in capsys.readouterr().err
    assert (tmp_path / "lp" / "results.json").read_text() == results  # the finished run is left as it was


def test_l2_grid_from_a_file_or_a_flag_is_checked_before_anything_runs(tmp_path, capsys):
    probe = {"method": "linprobe"}
    assert resolve_config({**probe, "l2_grid": 0.5}).l2_grid == [0.5]  # one number, as YAML reads `l2_grid: 0.5`
    assert resolve_config({**probe, "l2_grid": "1e-3, 1e-2"}).l2_grid == [1e-3, 1e-2]  # numbers, not characters
    assert resolve_config({**probe, "l2_grid": "10"}).l2_grid == [10.0]
    for bad in ([], "", "1e-3,x", [-1.0], [float("inf")], {"a": 1}):
        with pytest.raises(ValueError, match=r"l2\.yaml: l2_grid .* must be one or more non-negative numbers"):
            resolve_config({**probe, "l2_grid": bad}, source="l2.yaml")
    assert cli.main(_args(tmp_path)) == 0
    results = (tmp_path / "lp" / "results.json").read_text()
    capsys.readouterr()
    for bad in ("", "-1"):  # a redo with a bad sweep fails before it removes the finished run's results
        assert cli.main([*_args(tmp_path), "--resume", "latest", f"--l2-grid={bad}"]) == 2
        assert "--l2-grid" in capsys.readouterr().err
        assert (tmp_path / "lp" / "results.json").read_text() == results


def test_a_probe_refuses_the_settings_of_training_it_would_ignore(tmp_path, capsys):
    for extra in (["--epochs", "5"], ["--head", "linear"], ["--label-map", "ilm"], ["--lr", "5"],
                  ["--templates", "ensemble"], ["--prompter", "evp"], ["--diversity", "ref"]):  # fmt: skip
        args = ["train", "--method", "linprobe", *_args(tmp_path)[1:], "--model", "cifar:resnet20", *extra]
        assert cli.main(args) == 2
        assert f"{' '.join(extra)}: a linear probe fits logistic regression" in capsys.readouterr().err
        assert not (tmp_path / "lp").exists()


def test_a_probe_without_validation_is_refused_before_features_are_extracted(
    tmp_path, monkeypatch, capsys, vprompt_caplog
):
    real = linprobe.extract_features
    monkeypatch.setattr(linprobe, "extract_features", lambda *a, **k: pytest.fail("refused too late"))
    assert cli.main([*_args(tmp_path), "--val-fraction", "0"]) == 2
    assert "there is none (--val-fraction 0)" in capsys.readouterr().err
    # two training images in all: no class has two to hold one out, whatever the fraction
    assert cli.main([*_args(tmp_path), "--dataset-option", "n_train=2", "--val-fraction", "0.2"]) == 2
    assert "there is none (no class has 2 training images to hold one out)" in capsys.readouterr().err
    # one strength needs none, and the log says which it is without speaking of epochs or a selection
    monkeypatch.setattr(linprobe, "extract_features", real)
    assert cli.main([*_args(tmp_path), "--val-fraction", "0", "--l2-grid", "0.01"]) == 0
    assert "done: linear probe test acc" in vprompt_caplog.text and "(l2 1.0e-02 the one given, no validation)" in (
        vprompt_caplog.text
    )
    assert "a training run keeps its last epoch" in vprompt_caplog.text and "selected on fixed" not in (
        vprompt_caplog.text
    )


def test_training_over_a_probes_folder_is_told_it_holds_another_run(tmp_path, capsys):
    assert cli.main(_args(tmp_path)) == 0
    capsys.readouterr()
    train = ["train", "--method", "vp", *_args(tmp_path)[1:9], "--output", str(tmp_path), "--name", "lp"]
    assert cli.main([*train, "--epochs", "1", "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'lp'} holds a run with other settings (method='linprobe' there, 'vp' here" in err
    assert "delete its results.json" not in err


def test_a_run_config_made_directly_takes_its_methods_recipe(tmp_path):
    from vprompt import RunConfig

    probe = RunConfig(method="linprobe", model="cifar:resnet20", dataset="synthetic", output=str(tmp_path))
    assert probe.prompter == "none" and probe.epochs == 0  # not EVP's prompter, which would shrink the images
    vp = RunConfig(method="vp", lr=4.0)
    assert (vp.prompter, vp.optimizer, vp.lr) == ("pad", "sgd", 4.0)
    assert RunConfig(method="vp").to_dict() == resolve_config({"method": "vp"}).to_dict()
    with pytest.raises(ValueError, match="unknown method 'evq'; did you mean evp"):
        RunConfig(method="evq")


def test_linprobe_refuses_a_prompter_and_is_no_checkpoint_for_eval(tmp_path, capsys, monkeypatch):
    assert cli.main(["train", "--method", "linprobe", "--prompter", "evp", *_args(tmp_path)[1:]]) == 2
    assert "--prompter evp: a linear probe fits logistic regression on frozen features, with no prompt" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "lp").exists()
    threads, seen = torch.get_num_threads(), []
    build = linprobe.build_backbone
    monkeypatch.setattr(linprobe, "build_backbone", lambda *a: seen.append(torch.get_num_threads()) or build(*a))
    try:
        torch.set_num_threads(2)
        assert cli.main([*_args(tmp_path), "--threads", "1"]) == 0
        assert seen == [1] and torch.get_num_threads() == 2  # --threads reaches the probe too, for its run
    finally:
        torch.set_num_threads(threads)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "lp")]) == 2
    assert "is a linear probe: vprompt eval evaluates prompts" in capsys.readouterr().err
    # The Python API's fit_linear_probe is a run like any other: its threads too, given back when it ends
    seen.clear()
    cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "method": "evp", "threads": 1,
                          "output": str(tmp_path), "name": "api"})  # fmt: skip
    try:
        torch.set_num_threads(2)
        assert linprobe.fit_linear_probe(cfg)["method"] == "linprobe"  # (another method's config: probed)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_linprobe_refuses_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(_args(tmp_path)) == 2
    assert "launch it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "lp").exists()  # refused before the run folder is locked (and made)


def test_a_stopped_probe_resumes_from_the_splits_already_extracted(tmp_path, monkeypatch):
    real, calls = linprobe.extract_features, []

    def stop_at_test(backbone, prompter, ds, *args, **kwargs):
        calls.append(len(ds))
        if len(calls) == 3:  # train, val, then the test split: stopped there
            raise KeyboardInterrupt
        return real(backbone, prompter, ds, *args, **kwargs)

    monkeypatch.setattr(linprobe, "extract_features", stop_at_test)
    assert cli.main(_args(tmp_path)) == 130  # (the status of a run stopped by Ctrl-C)
    assert (tmp_path / "lp" / "features.safetensors").is_file() and not (tmp_path / "lp" / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(linprobe, "extract_features", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    assert cli.main(_args(tmp_path, "--resume", "latest")) == 0
    assert calls == [60]  # only the 60 test images were extracted again
    assert json.loads((tmp_path / "lp" / "results.json").read_text())["test"]["n"] == 60
