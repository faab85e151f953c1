"""End to end through the real command line: train, eval, zeroshot, resume, list, config files, bad input."""

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from vprompt import cli, engine, runs
from vprompt.config import (
    PRECISIONS,
    SIZE_KEYS,
    check_recipe_kept,
    load_yaml,
    resolve_config,
    shipped_configs,
    under,
    with_filled_recorded,
)

from .conftest import TINY_MODEL, tiny_run_args


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vprompt", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"vprompt {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def test_train_then_eval_through_the_cli(tmp_path, capsys):
    proc = _run(*tiny_run_args(tmp_path, "--diversity", "di"))
    assert "test acc" in proc.stdout and "val acc" in proc.stdout
    run = tmp_path / "run"
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "results.json", "prompt.safetensors", "last.pt"):
        assert (run / name).is_file(), name
    meta = yaml.safe_load((run / "config.yaml").read_text())
    assert meta["config"]["model"] == TINY_MODEL and meta["config"]["lr"] == 70.0 and "torch" in meta["versions"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all("val_acc1" in m for m in metrics)
    splits = json.loads((run / "splits.json").read_text())
    assert splits["val"] and not set(splits["val"]) & set(splits["train"])
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    with safe_open(str(run / "prompt.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["dataset"] == "synthetic"
        prompt = f.get_tensor("prompter.prompt")
    inner = (prompt * (1 - f_mask(prompt))).abs().sum()
    assert inner == 0 and prompt.abs().sum() > 0

    results = json.loads((run / "results.json").read_text())
    assert results["selection"] == "val" and 1 <= results["best_epoch"] <= 2
    out = _run("eval", "--checkpoint", str(run / "prompt.safetensors"), "--split", "test", "--json")
    evaluated = json.loads(out.stdout.strip().splitlines()[-1])
    assert evaluated["acc1"] == pytest.approx(results["test"]["acc1"])
    assert evaluated["n"] == 48
    assert cli.main(["eval", "--checkpoint", str(run), "--split", "val", "--json"]) == 0  # (in this process)
    val = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert val["acc1"] == pytest.approx(results["val"]["acc1"]) and val["n"] == len(splits["val"])
    assert cli.main(["eval", "--checkpoint", str(run / "last.pt")]) == 2  # the training state, not the prompt
    assert "last.pt is a run's training state (for --resume); give its prompt.safetensors" in capsys.readouterr().err


def f_mask(prompt: torch.Tensor) -> torch.Tensor:
    from vprompt.prompters import EVPPrompter

    return EVPPrompter(prompt.shape[-1]).mask


def _stops_at_call(n, real):
    """``real``, except that its ``n``-th call is interrupted (as by Ctrl-C)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper


def _final_prompt(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]["prompter.prompt"]


@pytest.mark.parametrize("method", ["evp", "vp"])
def test_interrupted_run_resumes_to_the_same_prompt(tmp_path, monkeypatch, method):
    extra = ("--method", method, "--warmup-steps", "3") if method == "vp" else ("--method", method)
    extra += ("--device", "cpu")  # (on a GPU only --deterministic repeats a run: the GPU test below)
    assert cli.main(tiny_run_args(tmp_path, *extra, name="straight", epochs=3)) == 0

    real = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(3, real))
    assert cli.main(tiny_run_args(tmp_path, *extra, name="broken", epochs=3)) == 130
    assert torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "broken" / "results.json").exists()
    # Starting again without --resume must not overwrite the interrupted run.
    assert cli.main(tiny_run_args(tmp_path, *extra, name="broken", epochs=3)) == 2
    monkeypatch.setattr(engine, "train_one_epoch", real)
    # A process killed while it wrote (not unwound as here) leaves a temporary file, which the resume removes.
    (tmp_path / "broken" / ".last.pt.k3j9x0a_").write_bytes(b"half")
    (tmp_path / "broken" / ".notes").write_text("the user's")
    assert cli.main(tiny_run_args(tmp_path, *extra, "--resume", "latest", name="broken", epochs=3)) == 0
    assert not (tmp_path / "broken" / ".last.pt.k3j9x0a_").exists() and (tmp_path / "broken" / ".notes").is_file()
    assert torch.equal(_final_prompt(tmp_path / "straight"), _final_prompt(tmp_path / "broken"))
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((tmp_path / "broken" / "results.json").read_text())
    assert straight["test"] == resumed["test"]
    # When each start was: the first from scratch, the second from the saved state.
    assert "started" in yaml.safe_load((tmp_path / "broken" / "config.yaml").read_text())
    assert "resumed" in yaml.safe_load((tmp_path / "broken" / "config.resumed.yaml").read_text())
    assert cli.main(tiny_run_args(tmp_path, *extra, "--resume", "latest", name="fresh", epochs=1)) == 0
    fresh = yaml.safe_load((tmp_path / "fresh" / "config.yaml").read_text())  # no state yet: it started
    assert "started" in fresh and "resumed" not in fresh


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    # as a scheduler stops a job, or a suite its runs: the run unwinds, says so, and can be resumed
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vprompt", *tiny_run_args(tmp_path, epochs=10000)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        for _ in range(600):
            if (run / "last.pt").is_file() or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "vprompt: interrupted; files already written are intact (resume with --resume latest)" in err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] >= 1 and not (run / "results.json").exists()


def test_an_unknown_flag_is_told_by_its_commands_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["linprobe", "--label-map", "flm"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "vprompt linprobe: error: unrecognized arguments: --label-map flm" in err
    assert "usage: vprompt linprobe" in err


@pytest.mark.parametrize("command", ["eval", "list"])
def test_an_interrupted_command_without_resume_is_told_to_run_again(monkeypatch, capsys, command):
    monkeypatch.setattr(cli, f"_cmd_{command}", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["eval", "--checkpoint", "somewhere"] if command == "eval" else ["list", "datasets"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "(run the same command again)" in err and "--resume" not in err


def test_a_trainable_head_skips_the_prompts_warmup(tmp_path):
    cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "method": "vp", "head": "linear",
                          "epochs": 2, "output": str(tmp_path)})  # fmt: skip
    model, _, _ = engine._build_for_run(cfg, torch.device("cpu"))
    (prompt_opt, head_opt), _ = engine._optimizers(cfg, model, steps_per_epoch=10)
    assert prompt_opt.param_groups[0]["lr"] < 0.01 * cfg.lr  # VP warms up over its first 1000 steps
    assert head_opt.param_groups[0]["lr"] == pytest.approx(cfg.head_lr or 1e-3)  # the head does not
    only_head = dataclasses.replace(cfg, prompter="none", warmup_steps=50)  # ... unless it is all there is
    model, _, _ = engine._build_for_run(only_head, torch.device("cpu"))
    (head_opt,), _ = engine._optimizers(only_head, model, steps_per_epoch=10)
    assert head_opt.param_groups[0]["lr"] < 0.1 * (cfg.head_lr or 1e-3)


def test_log_txt_records_how_a_run_stopped(tmp_path, monkeypatch, capsys):
    real, log = engine.train_one_epoch, tmp_path / "run" / "log.txt"
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(2, real))
    assert cli.main(tiny_run_args(tmp_path, epochs=3)) == 130
    assert "WARNING stopped: interrupted; what was written is kept (--resume latest continues)" in log.read_text()
    assert "stopped:" not in capsys.readouterr().err  # (the console has its own line)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(engine, "train_one_epoch", broken)
    with pytest.raises(RuntimeError):
        cli.main(tiny_run_args(tmp_path, "--resume", "latest", epochs=3))
    last = log.read_text().strip().splitlines()[-1]
    assert last.endswith("stopped by an error: RuntimeError: CUDA error: an illegal memory access was encountered")


def test_a_resume_with_another_precision_or_eval_every_is_told(tmp_path, monkeypatch, vprompt_caplog):
    real = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(2, real))
    assert cli.main(tiny_run_args(tmp_path, epochs=2)) == 130
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(2, real))
    assert cli.main(tiny_run_args(tmp_path, name="same", epochs=2)) == 130
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert cli.main(tiny_run_args(tmp_path, "--resume", "latest", name="same", epochs=2)) == 0
    assert "other settings" not in vprompt_caplog.text
    resumed = tiny_run_args(tmp_path, "--resume", "latest", "--precision", "bf16", "--eval-every", "2", epochs=2)
    assert cli.main(resumed) == 0
    told = "continued with other settings than the epochs before (precision='fp32' there, 'bf16' here, eval_every=1"
    assert told in vprompt_caplog.text
    # the finished run redone trains no epoch: how often its epochs are validated changes nothing
    vprompt_caplog.clear()
    assert cli.main(tiny_run_args(tmp_path, "--resume", "latest", "--precision", "bf16", epochs=2)) == 0
    assert "other settings" not in vprompt_caplog.text


def test_a_warmup_as_long_as_the_run_is_told(tmp_path, vprompt_caplog):
    # VP's 1000 warmup steps in a run of 20 (a few-shot run): its lr would never reach --lr
    cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "method": "vp", "epochs": 2})
    model, _, _ = engine._build_for_run(cfg, torch.device("cpu"))
    engine._optimizers(cfg, model, steps_per_epoch=10)
    told = "--warmup-steps 1000 is as long as the run's 20 steps (2 epochs of 10): its lr never reaches --lr 40"
    assert told in vprompt_caplog.text
    vprompt_caplog.clear()
    engine._optimizers(dataclasses.replace(cfg, warmup_steps=5), model, steps_per_epoch=10)
    assert "--warmup-steps" not in vprompt_caplog.text
    engine._optimizers(dataclasses.replace(cfg, epochs=1), model, steps_per_epoch=10)
    assert "the run's 10 steps (1 epoch of 10)" in vprompt_caplog.text
    vprompt_caplog.clear()
    only_head = dataclasses.replace(cfg, prompter="none", head="linear")  # the warmup is the head's: its lr is named
    model, _, _ = engine._build_for_run(only_head, torch.device("cpu"))
    engine._optimizers(only_head, model, steps_per_epoch=10)
    assert "its lr never reaches --head-lr 0.001 or anneals" in vprompt_caplog.text


def test_sizes_left_to_defaults_are_saved_and_a_prompt_of_other_sizes_is_a_clear_error(tmp_path):
    assert cli.main(tiny_run_args(tmp_path, "--method", "vp", epochs=1)) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["config"]
    assert (saved["input_size"], saved["prompt_size"]) == (64, 9)  # the model's 64 pixels, 30/224 of them
    cfg = resolve_config({**saved, "prompt_size": 4})
    model, _, _ = engine._build_for_run(cfg, torch.device("cpu"))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    with pytest.raises(ValueError, match="the saved prompter does not fit this run's .*--prompt-size"):
        model.load_artifact_state(state)


def test_eval_of_a_prompt_file_whose_tensors_were_edited_names_the_file(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 0
    path = tmp_path / "run" / "prompt.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["prompter.renamed"] = tensors.pop("prompter.prompt")
    save_file(tensors, str(path), metadata=meta)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{path} does not hold the prompt its own settings describe (Missing key(s)" in err
    assert "edited or damaged" in err and "--input-size" not in err


def test_ilm_on_image_files_with_workers_and_random_crops_resumes_exactly(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in ("a", "b", "c"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    # on the CPU: on a GPU only --deterministic repeats a run (test_deterministic_gpu_runs_repeat_and_resume_exactly)
    args = ["--model", "cifar:resnet20", "--pretrained", "none", "--dataset", "imagefolder", "--data-dir",
            str(tmp_path / "data"), "--label-map", "ilm", "--diversity", "ref", "--workers", "1", "--lr", "1",
            "--val-fraction", "0.25", "-b", "8", "--device", "cpu"]  # fmt: skip
    assert cli.main(tiny_run_args(tmp_path, *args, name="straight", epochs=3)) == 0
    real = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(3, real))
    assert cli.main(tiny_run_args(tmp_path, *args, name="broken", epochs=3)) == 130
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert cli.main(tiny_run_args(tmp_path, *args, "--resume", "latest", name="broken", epochs=3)) == 0
    assert torch.equal(_final_prompt(tmp_path / "straight"), _final_prompt(tmp_path / "broken"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (a CPU run is deterministic anyway)")
@pytest.mark.parametrize("model", ["cifar:resnet20", TINY_MODEL, "timm:test_vit", "timm:test_resnet"])
def test_deterministic_gpu_runs_repeat_and_resume_exactly(tmp_path, monkeypatch, model):
    args = ["--model", model, "--pretrained", "none", "--device", "cuda", "--deterministic", "--diversity", "di"]
    for name in ("one", "two"):
        assert cli.main(tiny_run_args(tmp_path, *args, name=name, epochs=3)) == 0
    real = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(3, real))
    assert cli.main(tiny_run_args(tmp_path, *args, name="broken", epochs=3)) == 130
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert cli.main(tiny_run_args(tmp_path, *args, "--resume", "latest", name="broken", epochs=3)) == 0
    one = _final_prompt(tmp_path / "one")
    assert torch.equal(one, _final_prompt(tmp_path / "two")) and torch.equal(one, _final_prompt(tmp_path / "broken"))


def test_a_finished_run_redone_and_interrupted_keeps_no_results_of_other_settings(tmp_path, monkeypatch, capsys):
    args, run = tiny_run_args(tmp_path, "--device", "cpu"), tmp_path / "run"
    assert cli.main(args) == 0 and (run / "results.json").is_file()
    finished = (run / "results.json").read_text()
    real_write = runs.write_json

    def stop_at_results(path, data):
        if str(path).endswith("results.json"):
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(runs, "write_json", stop_at_results)
    assert cli.main([*args, "--resume", "latest", "--eval-every", "2"]) == 130  # its final evaluation redone
    assert (run / "config.resumed.yaml").is_file() and not (run / "results.json").exists()  # unfinished, not done
    assert (run / runs.PREVIOUS_RESULTS).read_text() == finished  # and what it had finished is not lost
    monkeypatch.setattr(runs, "write_json", real_write)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(run), "--json"]) == 0  # its prompt is the finished run's
    out, err = capsys.readouterr()
    assert "unfinished" not in json.loads(out.strip().splitlines()[-1]) and "has not finished" not in err
    assert cli.main([*args, "--resume", "latest", "--eval-every", "2"]) == 0 and (run / "results.json").is_file()
    assert not (run / runs.PREVIOUS_RESULTS).exists()

    # So is a run that trains nothing (no last.pt to resume: redone from the start), its first config kept.
    zeroshot, run = tiny_run_args(tmp_path, "--method", "zeroshot", "--epochs", "0", name="zs"), tmp_path / "zs"
    assert cli.main(zeroshot) == 0
    first = (run / "config.yaml").read_text()
    monkeypatch.setattr(runs, "write_json", stop_at_results)
    assert cli.main([*zeroshot, "--resume", "latest", "--precision", "bf16"]) == 130
    assert not (run / "results.json").exists() and (run / "config.yaml").read_text() == first
    assert yaml.safe_load((run / "config.resumed.yaml").read_text())["config"]["precision"] == "bf16"
    # its earlier results still mark the folder as holding a run, which another run may not take over
    capsys.readouterr()
    assert cli.main([*zeroshot, "--templates", "ensemble"]) == 2
    told = f"run folder {run} already holds a run being redone (its earlier results wait in {runs.PREVIOUS_RESULTS})"
    assert told in capsys.readouterr().err
    assert (run / runs.PREVIOUS_RESULTS).is_file()


def test_eval_of_an_unfinished_run_says_so(tmp_path, monkeypatch, capsys):
    args, run, real = tiny_run_args(tmp_path, epochs=3), tmp_path / "run", engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(1, real))
    assert cli.main(args) == 130 and not (run / "prompt.safetensors").exists()  # stopped in epoch 1
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(run)]) == 2
    assert f"run folder {run} has no prompt.safetensors yet: a run writes it when it first selects a prompt" in (
        capsys.readouterr().err
    )
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(2, real))
    assert cli.main([*args, "--resume", "latest"]) == 130  # from the start again, stopped in epoch 2
    assert (run / "prompt.safetensors").is_file()  # epoch 1's, selected so far
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["unfinished"] is True
    assert "has not finished (no results.json): this is the prompt selected up to epoch 1 of 3" in err
    monkeypatch.undo()
    assert cli.main([*args, "--resume", "latest"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "unfinished" not in json.loads(out.strip().splitlines()[-1]) and "has not finished" not in err


def test_a_new_run_in_a_folder_an_attempt_left_keeps_none_of_its_settings(tmp_path, monkeypatch):
    real = engine.train_one_epoch
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(1, real))
    first, run = tiny_run_args(tmp_path, "--lr", "70"), tmp_path / "run"
    assert cli.main(first) == 130  # stopped before any last.pt: the folder holds no run
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(1, real))
    assert cli.main([*first, "--resume", "latest"]) == 130 and (run / "config.resumed.yaml").is_file()
    assert (run / "splits.json").is_file()
    other = tiny_run_args(tmp_path, "--lr", "5", "--val-fraction", "0")
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(1, real))
    assert cli.main(other) == 130
    # the folder describes the new run only: its settings, and no validation split it never had
    assert not (run / "config.resumed.yaml").exists() and not (run / "splits.json").exists()
    assert runs.saved_run(run)["config"]["lr"] == 5.0
    monkeypatch.setattr(engine, "train_one_epoch", real)
    assert cli.main([*other, "--resume", "latest"]) == 0  # was refused: "lr=70.0 there, 5.0 here"
    assert yaml.safe_load((run / "config.resumed.yaml").read_text())["config"]["lr"] == 5.0


class _Sneaky:
    def __reduce__(self):  # what unpickling it would run
        return (print, ("code ran",))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("truncate", "last.pt is not a loadable vprompt training state (not the zip archive torch.save writes"),
        ("text", "last.pt is not a loadable vprompt training state (not the zip archive torch.save writes"),
        ("pickle", "loading them could run code: refused); delete it"),
        ("entries", "last.pt is a damaged vprompt training state (entries epoch (str), model (missing)); delete it"),
    ],
)
def test_a_damaged_last_pt_is_one_line_with_the_way_out(tmp_path, capsys, damage, needle):
    args, run = tiny_run_args(tmp_path, "--device", "cpu", epochs=1), tmp_path / "run"
    assert cli.main(args) == 0
    last = run / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:100])
    elif damage == "text":
        last.write_text("epoch: 3\n")
    elif damage == "pickle":
        torch.save({"format": "vprompt-last/1", "x": _Sneaky()}, last)
    else:  # edited by hand: what a resume reads is missing or of another type
        state = torch.load(last, weights_only=True)
        del state["model"]
        torch.save({**state, "epoch": "1"}, last)
    capsys.readouterr()
    assert cli.main([*args, "--resume", "latest", "--epochs", "2"]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert needle in err[-1] and err[-1].endswith("or resume from another (--resume PATH)"), out.err
    assert "weights_only=False" not in out.err and "code ran" not in out.out


def test_the_runs_own_last_pt_given_as_a_path_is_advised_as_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*tiny_run_args(tmp_path, epochs=1)[:-4], "--output", "runs", "--name", "o"]  # a relative --output
    assert cli.main(args) == 0
    last = tmp_path / "runs" / "o" / "last.pt"
    last.write_text("damaged")
    capsys.readouterr()
    assert cli.main([*args, "--resume", str(last)]) == 2
    assert "delete it to start the run again" in capsys.readouterr().err


def test_resume_from_a_file_that_is_no_training_state_is_not_told_to_delete_it(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("lr 0.1 worked best\n")
    assert cli.main(tiny_run_args(tmp_path, "--resume", str(notes), epochs=1)) == 2
    err = capsys.readouterr().err
    assert "notes.txt is not a loadable vprompt training state (not the zip archive torch.save writes" in err
    assert "give the last.pt of a vprompt run, or its folder" in err and "delete" not in err and "could run" not in err
    assert notes.read_text() == "lr 0.1 worked best\n"


def test_resume_rewinds_the_files_an_interruption_while_saving_left_ahead_of_last_pt(tmp_path, monkeypatch):
    from vprompt.checkpoint import PROMPT_FILE, load_prompt, save_prompt

    args, run = tiny_run_args(tmp_path, epochs=3), tmp_path / "run"
    real_save, real_train = engine.save_state, engine.train_one_epoch
    monkeypatch.setattr(engine, "save_state", _stops_at_call(2, real_save))
    assert cli.main(args) == 130
    state = torch.load(run / "last.pt", weights_only=True, map_location="cpu")  # (load_prompt reads to the CPU)
    assert state["epoch"] == 1 and state["train_seconds"] > 0 and [m["epoch"] for m in _metrics(run)] == [1, 2]
    # What a re-run of epoch 2 that does not reproduce it (another GPU) would leave: a prompt file ahead of last.pt.
    tensors, config, meta = load_prompt(run / PROMPT_FILE)
    save_prompt(run / PROMPT_FILE, {k: torch.zeros_like(v) for k, v in tensors.items()}, config, **{**meta, "epoch": 2})
    with open(run / "metrics.jsonl", "a") as f:  # and a line the interruption cut short
        f.write('{"epoch": 3, "lr": 0.')

    monkeypatch.setattr(engine, "save_state", real_save)
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main([*args, "--resume", "latest"]) == 130  # rewinds, then stops in epoch 2
    assert [m["epoch"] for m in _metrics(run)] == [1]
    tensors, _, meta = load_prompt(run / PROMPT_FILE)
    assert meta["epoch"] == state["best"]["epoch"] == 1
    assert all(torch.equal(tensors[k], v) for k, v in state["best_model"].items())

    monkeypatch.setattr(engine, "train_one_epoch", real_train)
    assert cli.main([*args, "--resume", "latest"]) == 0
    metrics = _metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["lr"] == yaml.safe_load((run / "config.yaml").read_text())["config"]["lr"]  # epoch 1's own
    results = json.loads((run / "results.json").read_text())
    assert results["train_seconds"] > state["train_seconds"]  # epoch 1's time is counted too


def test_resume_before_the_first_selection_leaves_no_prompt_of_a_later_epoch(tmp_path, monkeypatch):
    # --eval-every 2: epoch 2 is the first evaluated; it writes its prompt, then stops before writing last.pt.
    args, run = tiny_run_args(tmp_path, "--eval-every", "2", epochs=3), tmp_path / "run"
    monkeypatch.setattr(engine, "save_state", _stops_at_call(2, engine.save_state))
    assert cli.main(args) == 130
    assert (run / "prompt.safetensors").exists()
    state = torch.load(run / "last.pt", weights_only=True, map_location="cpu")
    assert state["epoch"] == 1 and not state["best_model"]
    monkeypatch.undo()
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main([*args, "--resume", "latest"]) == 130  # rewinds to epoch 1, which selected nothing
    assert not (run / "prompt.safetensors").exists() and _metrics(run) == []


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_first_epoch_cut_short_starts_again_with_clean_files(tmp_path, monkeypatch):
    args, run = tiny_run_args(tmp_path, epochs=2), tmp_path / "run"
    monkeypatch.setattr(engine, "save_state", _stops_at_call(1, engine.save_state))
    assert cli.main(args) == 130  # epoch 1's metrics and prompt were written, last.pt was not
    assert [m["epoch"] for m in _metrics(run)] == [1] and not (run / "last.pt").exists()
    monkeypatch.undo()
    assert cli.main([*args, "--resume", "latest"]) == 0  # from scratch: no epoch 1 of the first attempt left
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]


def test_resume_from_another_folder_goes_only_to_a_folder_without_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "train_one_epoch", _stops_at_call(2, engine.train_one_epoch))
    assert cli.main(tiny_run_args(tmp_path, name="a", epochs=2)) == 130  # a's last.pt is at epoch 1
    monkeypatch.undo()
    assert cli.main(tiny_run_args(tmp_path, "--lr", "5", name="b", epochs=2)) == 0  # another, finished run
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    capsys.readouterr()
    assert cli.main(tiny_run_args(tmp_path, "--resume", str(tmp_path / "a"), name="b", epochs=2)) == 2
    assert f"run folder {tmp_path / 'b'} already holds another run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    # Into a new folder a's run continues, with a's history of epoch 1.
    assert cli.main(tiny_run_args(tmp_path, "--resume", str(tmp_path / "a"), name="c", epochs=2)) == 0
    assert _metrics(tmp_path / "c")[0] == _metrics(tmp_path / "a")[0]
    assert [m["epoch"] for m in _metrics(tmp_path / "c")] == [1, 2]


def test_a_finished_run_continued_in_a_new_folder_is_that_folders_own(tmp_path, monkeypatch, capsys):
    assert cli.main(tiny_run_args(tmp_path, name="a", epochs=1)) == 0
    assert cli.main(tiny_run_args(tmp_path, "--resume", str(tmp_path / "a"), name="b", epochs=1)) == 0  # no epoch left
    assert (tmp_path / "b" / "last.pt").read_bytes() == (tmp_path / "a" / "last.pt").read_bytes()
    results = (tmp_path / "b" / "results.json").read_text()
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: pytest.fail("a finished epoch was re-trained"))
    assert cli.main(tiny_run_args(tmp_path, "--resume", "latest", name="b", epochs=1)) == 0  # finished again, as is
    assert json.loads((tmp_path / "b" / "results.json").read_text())["test"] == json.loads(results)["test"]
    # A finished run whose training state is gone is not trained again from scratch under its results.
    (tmp_path / "b" / "last.pt").unlink()
    capsys.readouterr()
    assert cli.main(tiny_run_args(tmp_path, "--resume", "latest", name="b", epochs=1)) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b'} holds a finished run but not its training state (last.pt)" in err
    assert (tmp_path / "b" / "results.json").read_text() == results


def test_resume_refuses_changed_settings(tmp_path, capsys, monkeypatch):
    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 0
    built = []
    monkeypatch.setattr(engine, "_build_for_run", lambda *a, **k: built.append(a) or pytest.fail("built"))
    assert cli.main(tiny_run_args(tmp_path, "--lr", "5", "--resume", "latest", epochs=1)) == 2
    assert "other settings (lr=70.0 there, 5.0 here)" in capsys.readouterr().err
    assert not built  # told before the model and the data are built (which may download them)
    monkeypatch.undo()
    assert cli.main(tiny_run_args(tmp_path, "--diversity", "di", "--resume", "latest", epochs=1)) == 2
    assert "other settings (diversity='ref' there, 'di' here)" in capsys.readouterr().err


def test_weights_spelled_otherwise_or_moved_are_the_same_run(tmp_path, monkeypatch):
    for path in ("w/m.pt", "v/other.pt"):
        (tmp_path / path).parent.mkdir()
        (tmp_path / path).write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config({"pretrained": str(tmp_path / "w" / "m.pt")})
    assert runs.changed_settings({"pretrained": "w/m.pt"}, cfg) == ""  # the same file, relative
    assert runs.changed_settings({"pretrained": "/on/another/machine/m.pt"}, cfg) == ""  # moved
    for other in ("v/other.pt", "openai", None):  # another file that is there, a tag, random weights
        assert "pretrained=" in runs.changed_settings({"pretrained": other}, cfg), other
    # random weights, however a run asked for them (YAML's false is a bool): also a run saved with the word itself
    random = resolve_config({"model": "timm:test_resnet", "pretrained": False})
    assert random.pretrained is None
    for word in ("random", "False", False, "none"):
        assert runs.changed_settings({"model": "timm:test_resnet", "pretrained": word}, random) == "", word
    assert "pretrained=" in runs.changed_settings({"model": "timm:test_resnet", "pretrained": "default"}, random)


def test_a_dataset_option_given_its_default_is_the_same_run():
    cfg = resolve_config({"dataset": "synthetic", "dataset_options": {"n_train": 96, "size": 32}})  # 32: the default
    assert runs.changed_settings({"dataset": "synthetic", "dataset_options": {"n_train": 96}}, cfg) == ""
    other = {"dataset": "synthetic", "dataset_options": {"n_train": 96, "size": 16}}
    assert "dataset_options={'n_train': 96, 'size': 16} there, {'n_train': 96} here" in runs.changed_settings(
        other, cfg
    )
    dtd = resolve_config({"dataset": "dtd"})  # and the other way round: the default spelled out in the earlier run
    assert runs.changed_settings({"dataset": "dtd", "dataset_options": {"partition": 1}}, dtd) == ""
    assert "dataset_options=" in runs.changed_settings({"dataset": "dtd", "dataset_options": {"partition": 2}}, dtd)


def test_a_finished_run_is_neither_overwritten_nor_removed_by_a_second_start(tmp_path, capsys):
    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 2
    acc = json.loads((tmp_path / "run" / "results.json").read_text())["test"]["acc1"]
    told = f"already holds a finished run (test acc {acc:.2f}, in its results.json); --resume latest redoes its last"
    assert told in capsys.readouterr().err
    # a mistyped dataset or option in the same command is told as such, not as the folder's state
    assert cli.main(tiny_run_args(tmp_path, "--dataset", "synthtic", epochs=1)) == 2
    assert "unknown --dataset 'synthtic'; did you mean synthetic?" in capsys.readouterr().err
    assert cli.main(tiny_run_args(tmp_path, "--dataset-option", "sise=16", epochs=1)) == 2
    assert "dataset 'synthetic' has no option 'sise'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    # what it says --resume latest does, it does (more epochs are another run: the schedule spans the epochs)
    assert cli.main([*tiny_run_args(tmp_path, epochs=1), "--resume", "latest"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"]["acc1"] == acc
    assert cli.main([*tiny_run_args(tmp_path, epochs=2), "--resume", "latest"]) == 2
    assert "epochs=1 there, 2 here" in capsys.readouterr().err


def test_text_features_are_computed_once_per_run(tmp_path, monkeypatch):
    from vprompt.backbones import OpenCLIPBackbone

    calls = []
    real = OpenCLIPBackbone.encode_text

    def counting(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(OpenCLIPBackbone, "encode_text", counting)
    assert cli.main(tiny_run_args(tmp_path, epochs=3)) == 0
    assert calls == [10]  # 10 classes x 1 template, one batch, for 3 epochs of training and all evaluations


def test_zeroshot_evaluates_without_training(tmp_path):
    args = ["zeroshot", "--model", TINY_MODEL, "--dataset", "synthetic", "--dataset-option", "n_test=40",
            "--dataset-option", "n_train=40", "--output", str(tmp_path), "--name", "zs"]  # fmt: skip
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert results["epochs"] == 0 and results["test"]["n"] == 40 and results["method"] == "zeroshot"
    assert not (tmp_path / "zs" / "last.pt").exists()


def test_zeroshot_evaluates_a_folder_of_test_images_only(tmp_path, capsys):
    from PIL import Image

    for c, name in enumerate(("ant", "bee")):
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (200 * c, 40 * i, 0)).save(tmp_path / "data" / "test" / name / f"{i}.png")
    args = ["zeroshot", "--model", TINY_MODEL, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
            "--output", str(tmp_path), "--workers", "0"]  # fmt: skip
    assert cli.main([*args, "--name", "zs"]) == 0  # CLIP's text head learns nothing from training images
    results = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert (results["n_train"], results["selection"], results["test"]["n"]) == (0, "none", 6)
    assert results["head"] == "text"
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "zs"), "--split", "val"]) == 2  # (nor is there a val)
    assert "has no training split, which the val split comes from; use --split test" in capsys.readouterr().err
    # a label map (a classifier's default head) is fitted on training images: the head is what to change
    classifier = ["--model", "cifar:resnet20", "--pretrained", "random"]
    assert cli.main([*args, *classifier, "--name", "flm"]) == 2
    err = capsys.readouterr().err
    assert "has no training split, and head flm is fitted on training images: --label-map identity or rlm" in err


def test_zeroshot_reuses_a_training_config_file_without_training(tmp_path, vprompt_caplog):
    train_file = tmp_path / "evp.yaml"
    training = {"prompter": "evp", "epochs": 2, "lr": 5.0}
    data = {"dataset": "synthetic", "dataset_options": {"n_train": 40, "n_test": 20}, "seed": 3}
    train_file.write_text(yaml.safe_dump({"model": TINY_MODEL, **data, **training}))
    args = ["zeroshot", "-c", str(train_file), "--output", str(tmp_path), "--name", "zs"]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert results["epochs"] == 0 and results["method"] == "zeroshot" and results["test"]["n"] == 20
    assert "not using the settings of" in vprompt_caplog.text and "epochs, lr, prompter\n" in vprompt_caplog.text
    assert yaml.safe_load((tmp_path / "zs" / "config.yaml").read_text())["config"]["seed"] == 3  # a zero-shot flag
    assert cli.main([*args, "--resume", "latest"]) == 0  # evaluated again in the same folder
    assert cli.main([*args, "--templates", "single", "--resume", "latest"]) == 2  # but not another run over it
    # a few-shot run's file too: zero-shot CLIP reads no training image, so its shots are left out, not refused
    train_file.write_text(yaml.safe_dump({"model": TINY_MODEL, **data, **training, "shots": 2}))
    assert cli.main([*args[:-1], "few"]) == 0
    assert "not using the settings of" in vprompt_caplog.text and "its run does not use: shots" in vprompt_caplog.text
    assert yaml.safe_load((tmp_path / "few" / "config.yaml").read_text())["config"]["shots"] is None
    assert (tmp_path / "zs" / "results.json").exists()
    # A zero-shot run through a prompter (train --method zeroshot) is another run with another prompter.
    zs = ["train", "--method", "zeroshot", "--model", TINY_MODEL, "--dataset", "synthetic", "--output", str(tmp_path)]
    assert cli.main([*zs, "--name", "zsp", "--prompter", "evp"]) == 0
    assert cli.main([*zs, "--name", "zsp", "--prompter", "pad", "--resume", "latest"]) == 2


def test_zeroshot_of_a_full_data_runs_config_does_not_warn_of_its_unset_shots(tmp_path, vprompt_caplog):
    # a run's config.yaml spells out every setting, shots: null and train_fraction: null among them
    args = ["--model", TINY_MODEL, "--dataset", "synthetic", "--dataset-option", "n_train=40", "--dataset-option",
            "n_test=20", "--output", str(tmp_path)]  # fmt: skip
    assert cli.main(["train", *args, "--epochs", "1", "--name", "evp", "--log-every", "0"]) == 0
    vprompt_caplog.clear()
    assert cli.main(["zeroshot", "-c", str(tmp_path / "evp" / "config.yaml"), "--name", "zs"]) == 0
    assert "its run does not use" not in vprompt_caplog.text


def test_a_flag_that_makes_a_files_setting_unused_leaves_it_out(tmp_path, vprompt_caplog, capsys):
    # an ILM run's file reused with another head: its interval was about the map replaced
    common = {"model": "cifar:resnet20", "pretrained": "none", "dataset": "synthetic", "epochs": 1,
              "output": str(tmp_path), "threads": 1}  # fmt: skip
    ilm = tmp_path / "ilm.yaml"
    ilm.write_text(yaml.safe_dump({**common, "label_map": "ilm", "ilm_interval": 2}))
    assert cli.main(["train", "-c", str(ilm), "--label-map", "flm", "--name", "flm"]) == 0
    assert f"not using the settings of {ilm} its run does not use: ilm_interval" in vprompt_caplog.text
    saved = yaml.safe_load((tmp_path / "flm" / "config.yaml").read_text())["config"]
    assert (saved["label_map"], saved["ilm_interval"]) == ("flm", 1)
    # a file whose own run would not use a setting is still refused, and so is a flag
    flm = tmp_path / "flm.yaml"
    flm.write_text(yaml.safe_dump({**common, "label_map": "flm", "ilm_interval": 2}))
    assert cli.main(["train", "-c", str(flm), "--name", "no"]) == 2
    assert f"{flm}: ilm_interval 2: only label map ilm is recomputed, not flm" in capsys.readouterr().err
    assert cli.main(["train", "-c", str(ilm), "--label-map", "flm", "--ilm-interval", "3", "--name", "no"]) == 2
    assert "command line: --ilm-interval 3: only label map ilm is recomputed" in capsys.readouterr().err
    # so is one of a file that needs a flag to be complete (its lr for AdamW)
    adamw = tmp_path / "adamw.yaml"
    adamw.write_text(yaml.safe_dump({**common, "label_map": "flm", "optimizer": "adamw", "momentum": 0.5}))
    assert cli.main(["train", "-c", str(adamw), "--lr", "0.01", "--name", "no"]) == 2
    assert f"{adamw}: momentum 0.5: only optimizer sgd has momentum, not adamw" in capsys.readouterr().err
    # a value typed that does nothing (SGD's momentum with AdamW) is no file's setting left out
    vprompt_caplog.clear()
    assert cli.main(["train", "-c", str(ilm), "--optimizer", "adamw", "--lr", "0.01", "--momentum", "0.9",
                     "--name", "typed"]) == 0  # fmt: skip
    assert "momentum" not in vprompt_caplog.text and "None" not in vprompt_caplog.text


@pytest.mark.parametrize(
    ("content", "command", "flags", "needle"),
    [
        ({"epoch": 3}, "zeroshot", [], "{file}: unknown setting 'epoch'; did you mean epochs?"),
        ({"method": "evp"}, "train", ["--method", "evq"], "command line: unknown method 'evq'"),
        ({"dataset_options": [1, 2]}, "train", ["--dataset-option", "n_train=8"], "{file}: dataset_options must be"),
        ({"dataset_options": [1, 2]}, "train", [], "{file}: dataset_options must be a mapping"),
    ],
)
def test_a_bad_value_is_blamed_on_where_it_came_from(tmp_path, capsys, content, command, flags, needle):
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(content))
    assert cli.main([command, "-c", str(file), "--output", str(tmp_path), *flags]) == 2
    assert needle.format(file=file) in capsys.readouterr().err
    assert not any(p.is_dir() for p in tmp_path.iterdir())


def test_pretrained_none_is_random_weights_from_a_file_or_the_command_line(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("pretrained: none\n")
    from_file = cli._run_values(cli.build_parser().parse_args(["train", "-c", str(file)]))[0]
    overridden = cli._run_values(cli.build_parser().parse_args(["train", "-c", str(file), "--pretrained", "None"]))[0]
    assert resolve_config(from_file).pretrained is None and resolve_config(overridden).pretrained is None
    assert resolve_config({"pretrained": "openai"}).pretrained == "openai"


def test_the_command_line_undoes_a_files_settings(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("deterministic: true\nshots: 2\n")

    def values(*flags):
        return resolve_config(cli._run_values(cli.build_parser().parse_args(["train", "-c", str(file), *flags]))[0])

    assert (values().deterministic, values().shots) == (True, 2)
    undone = values("--no-deterministic", "--shots", "none", "--train-fraction", "0.5")  # (one of the two, not both)
    assert (undone.deterministic, undone.shots, undone.train_fraction) == (False, None, 0.5)
    file.write_text("train_fraction: 0.5\n")
    assert values().train_fraction == 0.5 and values("--train-fraction", "None").train_fraction is None


def test_a_method_or_optimizer_over_a_file_made_for_another_is_refused(tmp_path, capsys):
    args = ["train", "--dataset", "synthetic", "--output", str(tmp_path)]
    assert cli.main([*args, "-c", "vp_clip_vitb32", "--method", "evp"]) == 2
    err = capsys.readouterr().err
    assert "method evp over " in err and "spells out method vp's recipe (optimizer sgd, lr 40," in err, err
    assert cli.main([*args, "-c", "evp_clip_vitb32.yaml", "--optimizer", "adamw"]) == 2
    assert "optimizer adamw over " in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # Given with what they need, or over settings that are not another method's recipe: as asked
    evp = load_yaml(shipped_configs()["evp_clip_vitb32"])
    check_recipe_kept({"optimizer": "adamw", "lr": 0.3}, evp, "command line", "evp.yaml")
    check_recipe_kept({"method": "vp"}, {"method": "evp", "epochs": 1000, "batch_size": 8}, "command line", "f.yaml")
    # A method whose recipe brings another optimizer, over a file's own lr for the old one: refused as --optimizer is
    with pytest.raises(ValueError, match=r"method vp \(optimizer sgd\) over f.yaml, whose lr 10 is a step size for"):
        check_recipe_kept({"method": "vp"}, {"method": "evp", "lr": 10}, "command line", "f.yaml")
    check_recipe_kept({"method": "vp", "lr": 40}, {"method": "evp", "lr": 10}, "command line", "f.yaml")
    with pytest.raises(ValueError, match=r"method vp \(optimizer sgd\) over f.yaml, whose lr 10"):  # (EVP by default)
        check_recipe_kept({"method": "vp"}, {"lr": 10}, "command line", "f.yaml")
    check_recipe_kept({"method": "zeroshot"}, {"method": "evp", "lr": 10}, "command line", "f.yaml")  # trains nothing
    check_recipe_kept({"method": "vp"}, {"method": "evp", "optimizer": "adamw", "lr": 0.01}, "cl", "f.yaml")  # stays
    # (a run's saved config, whose lr and optimizer its recipe filled: the new method's recipe fills them again)
    saved = {"method": "evp", "optimizer": "normgrad", "lr": 70, "recipe_filled": {"optimizer": "normgrad", "lr": 70}}
    check_recipe_kept({"method": "vp"}, saved, "command line", "f.yaml")
    with pytest.raises(ValueError, match="optimizer sgd over f.yaml, whose lr 70"):  # same method: its lr stays
        check_recipe_kept({"optimizer": "sgd"}, saved, "command line", "f.yaml")


def test_dataset_option_values_read_as_yaml_else_as_given():
    assert cli._key_value("crop=020") == ("crop", 20)  # decimal, not YAML 1.1's octal
    assert cli._key_value("pattern=*.jpg") == ("pattern", "*.jpg")  # not YAML (an alias): the text
    assert cli._key_value("sizes=[1, 2]") == ("sizes", [1, 2]) and cli._key_value("flip=true") == ("flip", True)
    assert cli._key_value("test-size=-5") == ("test_size", -5)


def test_a_runs_threads_are_the_runs_not_the_processs(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # as a suite worker holding its share of the cores, or a notebook's own choice
        cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "epochs": 1, "output": str(tmp_path),
                              "dataset_options": {"n_train": 40, "n_test": 20}, "batch_size": 20,
                              "threads": 1})  # fmt: skip
        engine.fit(cfg)
        assert torch.get_num_threads() == 3  # what the process does next (the suite's next run) has its own again
        engine.evaluate_checkpoint(cfg.run_dir, threads=1)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def test_deterministic_kernels_are_a_runs_setting_not_the_processs(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    with engine._engine_settings(resolve_config({"deterministic": True})):
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's sums repeat only with it
    assert not torch.are_deterministic_algorithms_enabled() and not cudnn.deterministic  # as they were
    refused = "Deterministic behavior was enabled ... you must set an environment variable: CUBLAS_WORKSPACE_CONFIG"
    with pytest.raises(ValueError, match=r"^--deterministic: this process used the GPU's .*export CUBLAS_WORK"):
        with engine._engine_settings(resolve_config({"deterministic": True})):
            raise RuntimeError(refused)  # as PyTorch's first product after cuBLAS read the variable, unset, refuses
    with pytest.raises(RuntimeError, match="other"), engine._engine_settings(resolve_config({"deterministic": True})):
        raise RuntimeError("other")  # (any other error is left as it is)
    assert not torch.are_deterministic_algorithms_enabled() and not cudnn.deterministic
    monkeypatch.setattr(cudnn, "benchmark", True)  # the caller's own choice, kept by a run that does not ask
    with engine._engine_settings(resolve_config({})):
        assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert cudnn.benchmark


def test_eval_batch_size_and_threads_flags_win_over_the_runs_settings(tmp_path, monkeypatch, capsys):
    assert (
        cli.main(tiny_run_args(tmp_path, "--eval-batch-size", "16", "--threads", "1", "--device", "cpu", epochs=1)) == 0
    )
    devices = []
    real_device = engine.resolve_device
    monkeypatch.setattr(engine, "resolve_device", lambda d, env=None: devices.append(d) or real_device(d, env))
    engine.evaluate_checkpoint(tmp_path / "run")
    assert devices == [None]  # this machine's default, not the device the run was trained on
    calls = []
    real = engine.make_loader
    monkeypatch.setattr(engine, "make_loader", lambda ds, bs, *a, **k: calls.append(bs) or real(ds, bs, *a, **k))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(f"{n} threads"))
    engine.evaluate_checkpoint(tmp_path / "run", batch_size=7)
    # this process's own thread count, and not the run's --threads 1, which was for the machine it trained on
    assert calls == [7]
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--threads", "2"]) == 0
    assert calls[1:] == ["2 threads", 16]
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "-b", "0"]) == 2  # blamed on the flag
    assert "command line: --batch-size 0 must be at least 1" in capsys.readouterr().err


def test_eval_reads_only_the_files_of_its_split_and_downloads_nothing(tmp_path, capsys):
    from vprompt.data.idx import write_idx

    rng = np.random.default_rng(0)
    full, only_test, only_train = tmp_path / "full", tmp_path / "only_test", tmp_path / "only_train"
    for folder in (full, only_test, only_train):
        folder.mkdir()
    for part, n, copy_to in (("train", 60, only_train), ("t10k", 20, only_test)):
        for kind, data in (("images-idx3", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)),
                           ("labels-idx1", (np.arange(n) % 10).astype(np.uint8))):  # fmt: skip
            for folder in (full, copy_to):
                write_idx(folder / f"{part}-{kind}-ubyte.gz", data)
    args = tiny_run_args(tmp_path, "--dataset", "mnist", "--data-dir", str(full), epochs=1)  # download allowed
    assert cli.main(args) == 0
    trained = json.loads((tmp_path / "run" / "results.json").read_text())["test_last"]["acc1"]
    capsys.readouterr()
    run = str(tmp_path / "run")
    assert cli.main(["eval", "--checkpoint", run, "--data-dir", str(only_test), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["acc1"] == trained
    assert cli.main(["eval", "--checkpoint", run, "--data-dir", str(only_test), "--split", "val"]) == 2
    assert "no train-images-idx3-ubyte" in capsys.readouterr().err and not (only_test / "mnist").exists()
    assert cli.main(["eval", "--checkpoint", run, "--data-dir", str(full), "--split", "val", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)  # and the training split's files alone serve --split val
    assert cli.main(["eval", "--checkpoint", run, "--data-dir", str(only_train), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == val and not (only_train / "mnist").exists()
    # Other training digits: a split redrawn from them is not the run's (some may be digits it trained on).
    more = tmp_path / "more"
    more.mkdir()
    write_idx(more / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (80, 28, 28), dtype=np.uint8))
    write_idx(more / "train-labels-idx1-ubyte.gz", (np.arange(80) % 10).astype(np.uint8))
    assert cli.main(["eval", "--checkpoint", run, "--data-dir", str(more), "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--split val: the data differ from those" in err and "train images: 50 then, 70 now" in err, err


def test_eval_from_another_folder_names_the_runs_relative_paths(tmp_path, monkeypatch, capsys):
    from vprompt.data.idx import write_idx

    work = tmp_path / "work"
    (work / "digits").mkdir(parents=True)
    for part, n in (("train", 40), ("t10k", 10)):
        write_idx(work / "digits" / f"{part}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(work / "digits" / f"{part}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    monkeypatch.chdir(work)
    assert cli.main(tiny_run_args(tmp_path, "--dataset", "mnist", "--data-dir", "digits", epochs=1)) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    run = str(tmp_path / "run")
    assert cli.main(["eval", "--checkpoint", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"the run's data_dir 'digits' is relative to the folder it was trained from and is not found "
                        f"from {tmp_path}; pass --data-dir with where it is")  # fmt: skip
    assert cli.main(["eval", "--checkpoint", run, "--data-dir", str(work / "digits")]) == 0
    monkeypatch.setenv("HOME", str(work))  # a path under ~ is found from anywhere
    assert cli.main(tiny_run_args(tmp_path, "--dataset", "mnist", "--data-dir", "~/digits", name="home", epochs=1)) == 0
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "home")]) == 0
    # A dataset that reads no files does not need its data folder (here one that never existed) to be found.
    monkeypatch.chdir(work)
    assert cli.main(tiny_run_args(tmp_path, "--data-dir", "nowhere", name="generated", epochs=1)) == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "generated"), "--split", "val"]) == 0


def test_eval_from_another_folder_names_the_runs_weights_file_given_by_its_bare_name(tmp_path, monkeypatch, capsys):
    # w.th has no folder in its name, like a tag (openai), but is named as a file: the run's, not a --pretrained typed
    from vprompt.cifar_resnet import CifarResNet

    work = tmp_path / "work"
    work.mkdir()
    torch.save(CifarResNet(20).state_dict(), work / "w.th")
    monkeypatch.chdir(work)
    args = ["zeroshot", "--model", "cifar:resnet20", "--pretrained", "w.th", "--dataset", "synthetic",
            "--dataset-option", "n_train=20", "--dataset-option", "n_test=10", "--label-map", "identity",
            "--output", str(tmp_path), "--name", "zs"]  # fmt: skip
    assert cli.main(args) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "zs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"the run's pretrained 'w.th' is relative to the folder it was trained from and is not "
                        f"found from {tmp_path}; pass --pretrained with where it is"), err  # fmt: skip
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "zs"), "--pretrained", str(work / "w.th")]) == 0


def test_eval_refuses_shift_options_without_shift(tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tmp_path), "--shift-severity", "3"]) == 2
    assert "--shift-severity applies to the shift sets: add --shift" in capsys.readouterr().err


def test_eval_downloads_the_datasets_files_without_shift(tmp_path, monkeypatch):
    asked = {}

    def evaluate_checkpoint(checkpoint, **kwargs):
        asked.update(kwargs)
        return {"acc1": 50.0, "n": 2, "split": kwargs["split"], "dataset": "mnist"}

    monkeypatch.setattr(engine, "evaluate_checkpoint", evaluate_checkpoint)
    assert cli.main(["eval", "--checkpoint", str(tmp_path), "--download", "--json"]) == 0
    assert asked["download"] is True and asked["shift"] is None  # (a missing dataset's error advises --download)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--inner-size", "64"], "--inner-size 64 must be smaller than --input-size 64"),
        (["--model", "ViT-B-33"], "unknown --model 'ViT-B-33'; did you mean"),
        (["--dataset", "imagefolder", "--data-dir", "/nonexistent/folder"], "/nonexistent/folder/train"),
        (["--dataset", "cifar1000"], "unknown --dataset 'cifar1000'; did you mean"),
        # told before the model is built: weights that cannot be had would hide it (offline, after a download)
        (["--dataset", "cifar1000", "--pretrained", "nosuchtag"], "unknown --dataset 'cifar1000'"),
        (["--dataset-option", "n_trian=3", "--pretrained", "nosuchtag"], "dataset 'synthetic' has no option 'n_trian'"),
        (["--method", "evq"], "unknown method 'evq'"),
        (["--dataset", "cifar10", "--dataset-option", "n=3"], "dataset 'cifar10' has no option 'n'"),
        (["--input-size", "96"], "input size 96 (--input-size, or input_size in a config file) does not fit model"),
        # a CNN that takes any size, but whose pooling shrinks this one to nothing: told before any data is read
        (["--model", "tv:squeezenet1_1", "--input-size", "8"], "does not fit model 'tv:squeezenet1_1', whose forward"),
        (["--inner-size", "64", "--pretrained", "nosuchtag"], "--inner-size 64 must be smaller"),  # (before weights)
        (["--method", "zeroshot"], "has nothing to train; use --epochs 0"),
        (["--method", "zeroshot", "--head", "linear", "--epochs", "0"], "zeroshot trains nothing"),
        (["--method", "vp", "--head", "linear", "--epochs", "0"], "--epochs 0 trains nothing"),
    ],
)
def test_bad_flags_give_one_clear_line(tmp_path, capsys, extra, needle):
    output = tmp_path / "new" / "runs"  # (folders the run would make)
    assert cli.main(tiny_run_args(output, *extra)) == 2  # (any other exception would escape as a traceback)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vprompt train: error:") and needle in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists(), "a run that never started left its folder behind"


def test_a_run_that_never_started_keeps_the_folders_another_run_made_beside_it(tmp_path):
    from vprompt.distributed import DistEnv

    with pytest.raises(ValueError), engine.run_folder(tmp_path / "new" / "runs" / "a", DistEnv()):
        (tmp_path / "new" / "runs" / "b").mkdir()  # another run, started meanwhile in the same new --output
        raise ValueError("refused")
    assert [p.name for p in (tmp_path / "new" / "runs").iterdir()] == ["b"]


def test_zeroshot_with_a_trainable_head_points_to_the_commands_that_train_one(tmp_path):
    args = [
        "--model",
        TINY_MODEL,
        "--dataset",
        "synthetic",
        "--dataset-option",
        "n_train=16",
        "--output",
        str(tmp_path),
    ]
    proc = _run("zeroshot", *args, "--head", "linear", check=False)
    assert proc.returncode == 2 and "vprompt linprobe trains a linear classifier" in proc.stderr, proc.stderr
    proc = _run("zeroshot", *args, "--head-lr", "0.1", check=False)  # nothing it could train
    assert proc.returncode == 2 and "unrecognized arguments: --head-lr" in proc.stderr, proc.stderr


def test_zeroshot_with_more_classes_than_a_classifiers_points_to_the_commands_that_train_a_head(tmp_path, capsys):
    args = ["zeroshot", "--model", "cifar:resnet20", "--dataset", "synthetic", "--dataset-option", "num_classes=12",
            "--dataset-option", "n_train=24", "--dataset-option", "n_test=12", "--output", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "12 classes and the model only 10" in err and "vprompt linprobe fits" in err and "--head linear" in err
    assert "use --head linear instead" not in err  # which zeroshot refuses


def test_vprompt_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VPROMPT_DEBUG", "1")
    proc = _run(*tiny_run_args(tmp_path, "--method", "evq"), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "unknown method 'evq'" in proc.stderr


def test_every_precision_the_flag_offers_has_an_autocast():
    x = torch.randn(2, 4)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert sorted(PRECISIONS) == sorted(dtypes)
    for precision in PRECISIONS:
        with engine.autocast(torch.device("cpu"), precision):
            y = torch.nn.functional.linear(x, torch.randn(3, 4))
        assert y.dtype == dtypes[precision], precision
    with pytest.raises(ValueError, match="--precision: unknown precision 'fp8' \\(choose from fp32, bf16, fp16\\)"):
        engine.autocast(torch.device("cpu"), "fp8")


def test_fp16_on_a_cpu_is_warned_about_once(vprompt_caplog):
    engine._warn_slow_precision.cache_clear()
    for _ in range(3):  # as every batch enters it
        with engine.autocast(torch.device("cpu"), "fp16"):
            pass
    # (a record may reach the capture twice, through the logger's handler and through propagation: count records)
    said = {id(r) for r in vprompt_caplog.records if "--precision fp16 on a CPU" in r.getMessage()}
    assert len(said) == 1 and "bf16 is a CPU's fast" in vprompt_caplog.text


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # (made, never entered)
def test_bf16_on_a_gpu_without_bf16_units_is_warned_about_once(vprompt_caplog, monkeypatch):
    capability = {0: (7, 0), 1: (8, 0)}  # (a V100 and an A100: only autocast's context is made, no GPU is used)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[device.index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: ["Tesla V100", "A100"][device.index])
    monkeypatch.setattr(torch.version, "hip", None)
    engine._warn_slow_precision.cache_clear()
    for device in ("cuda:0", "cuda:0", "cuda:1"):
        engine.autocast(torch.device(device), "bf16")
    engine.autocast(torch.device("cuda:0"), "fp16")
    said = [
        r.getMessage() for r in {id(r): r for r in vprompt_caplog.records}.values() if "--precision" in r.getMessage()
    ]
    assert said == [
        "--precision bf16 on Tesla V100 (compute capability 7.0): this GPU has no bf16 units and PyTorch emulates bf16 "
        "on it, slowly; fp16 is its fast half precision"
    ]
    engine._warn_slow_precision.cache_clear()  # (its cache holds the pretended GPUs)


def test_fit_given_settings_not_made_into_a_config_says_how(tmp_path):
    with pytest.raises(TypeError, match=r"fit takes a RunConfig, not a dict: resolve_config\(\{\.\.\.\}\) makes one"):
        engine.fit({"dataset": "synthetic", "output": str(tmp_path)})


def test_a_config_derived_with_another_method_takes_that_methods_recipe(tmp_path):
    evp = resolve_config({"model": "cifar:resnet20", "dataset": "mnist", "epochs": 3})
    vp = evp.replace(method="vp")
    assert (vp.prompter, vp.optimizer, vp.lr, vp.schedule, vp.diversity) == ("pad", "sgd", 40.0, "cosine", "none")
    assert vp.epochs == 3  # the user's own setting stays
    assert dataclasses.replace(evp, method="vp") == vp
    assert resolve_config({**evp.to_dict(), "method": "vp"}) == vp  # a saved config given another method too
    # A setting given wins, also one equal to what EVP's recipe had filled in.
    assert evp.replace(method="vp", diversity="ref", lr=70.0).diversity == "ref" and vp.replace(lr=5.0).lr == 5.0
    assert evp.replace(lr=70.0).replace(method="vp").lr == 70.0
    # A saved config read back with its own method keeps its values, even where the recipe has changed since.
    old = {**evp.to_dict(), "lr": 50.0, "recipe_filled": {**evp.recipe_filled, "lr": 50.0}}
    assert resolve_config(old).lr == 50.0 and resolve_config(evp.to_dict()) == evp
    unnamed = {k: v for k, v in evp.recipe_filled.items() if k != "method"}  # as runs saved it for a while
    assert resolve_config(with_filled_recorded({**evp.to_dict(), "recipe_filled": unnamed})) == evp

    # On the command line, a run's saved config.yaml: what its recipe filled in is no setting of the file's.
    saved = tmp_path / "config.yaml"

    def run_cfg(*flags, command="train", method=None):
        values, sources = cli._run_values(cli.build_parser().parse_args([command, "-c", str(saved), *flags]), method)
        return resolve_config({**values, **({"method": method} if method else {})}, "command line", sources)

    for cfg in (evp, vp):
        saved.write_text(yaml.safe_dump({"config": cfg.to_dict(), "argv": ["vprompt", "train"]}))
        assert run_cfg() == cfg  # the run again (a classifier's: the recipe's CLIP templates are no setting given)
    # How and where the run was started is no setting of what it trains: the file of a run that continued another
    # starts a run of its own (it continued that other run, silently), with this machine's device and threads.
    started = {**evp.to_dict(), "resume": "runs/a/last.pt", "threads": 1, "device": "cuda:1"}
    saved.write_text(yaml.safe_dump({"config": started, "argv": ["vprompt", "train"]}))
    assert run_cfg() == evp and run_cfg("--resume", "latest").resume == "latest"
    for old_run in (False, True):  # a run saved before runs recorded what was filled: its recipe's values are
        saved_cfg = {k: v for k, v in evp.to_dict().items() if not (old_run and k == "recipe_filled")}
        saved.write_text(yaml.safe_dump({"config": saved_cfg, "argv": ["vprompt", "train"]}))
        assert run_cfg("--method", "vp") == vp and run_cfg() == evp
    typed = run_cfg("--method", "vp", "--optimizer", "normgrad", "--lr", "70")  # typed: the user's, not the recipe's
    assert (typed.prompter, typed.optimizer, typed.lr) == ("pad", "normgrad", 70.0)
    assert run_cfg(command="zeroshot", method="zeroshot").templates == "ensemble"  # not EVP's single
    with pytest.raises(ValueError, match="--templates single: the text prompts of a CLIP text head, not of head"):
        run_cfg("--templates", "single")  # typed, it is a setting the classifier's run would not use
    for filled in ("{momentum: 0.5}", "{lr: 70}", "{method: evq, lr: 70}"):  # not what a run writes
        saved.write_text(f"method: evp\noptimizer: sgd\nlr: 70\nrecipe_filled: {filled}\n")
        with pytest.raises(ValueError, match=f"{saved}: recipe_filled .*: what a method's recipe and a model filled"):
            run_cfg()
    saved.write_text("method: evp\nlr: 70\n")  # the file's lr is a step size for its method's optimizer
    with pytest.raises(ValueError, match="optimizer sgd over .*, whose lr 70 is a step size for normgrad"):
        run_cfg("--optimizer", "sgd")
    # VP's prompter, which its recipe filled, does not keep EVP's sizes apart under --method evp
    vp_file = {**vp.to_dict(), "prompt_size": 9}
    assert "prompt_size" not in under({"method": "evp", "inner_size": 40}, vp_file)


def test_fit_leaves_the_callers_config_as_it_was(tmp_path):
    cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "epochs": 1, "output": str(tmp_path),
                          "dataset_options": {"n_train": 40, "n_test": 20}, "batch_size": 20})  # fmt: skip
    before = cfg.to_dict()
    engine.fit(cfg)
    assert cfg.to_dict() == before and cfg.input_size is None  # another model given it keeps its own size
    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())["config"]
    assert saved["input_size"] == 64 and saved["inner_size"] is not None  # the run's own record holds them
    # ... as filled in by the model: read back they stay; another method or model gets its own.
    assert saved["recipe_filled"]["model"] == TINY_MODEL and saved["recipe_filled"]["input_size"] == 64
    assert resolve_config(saved).to_dict() == saved
    vp = resolve_config({**saved, "method": "vp"})
    assert (vp.prompter, vp.input_size, vp.inner_size, vp.prompt_size) == ("pad", None, None, None)
    other = resolve_config({**saved, "model": "cifar:resnet20"})
    assert (other.prompter, other.input_size, other.inner_size, other.lr) == ("evp", None, None, 70.0)
    probe = resolve_config({**saved, "method": "linprobe", "epochs": None})  # (what the refill clears: not refused)
    args = cli.build_parser().parse_args(["train", "-c", str(cfg.run_dir / "config.yaml"), "--model", "cifar:resnet20"])
    assert resolve_config(*cli._run_values(args)[:1]).input_size is None  # the same on the command line
    assert (probe.prompter, probe.epochs, probe.warmup_steps) == ("none", 0, None)


def test_what_the_process_logs_after_a_run_is_not_written_to_its_log(tmp_path):
    cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "epochs": 1, "output": str(tmp_path),
                          "dataset_options": {"n_train": 40, "n_test": 20}, "batch_size": 20})  # fmt: skip
    logger = logging.getLogger("vprompt")
    failed = cfg.replace(name="failed", lr=1e30)
    engine.fit(cfg)
    with pytest.raises(ValueError, match="the training loss is"):  # a run that stops with an error too
        engine.fit(failed)
    logger.warning("the next cell's evaluation")
    for run in (cfg, failed):
        assert "the next cell's" not in (run.run_dir / "log.txt").read_text()
    assert not [h for h in logger.handlers if isinstance(h, logging.FileHandler)]  # (and their files are closed)


def test_a_run_leaves_the_callers_random_numbers_as_they_were(tmp_path):
    cfg = resolve_config({"model": TINY_MODEL, "dataset": "synthetic", "epochs": 1, "output": str(tmp_path),
                          "dataset_options": {"n_train": 40, "n_test": 20}, "batch_size": 20})  # fmt: skip
    torch.manual_seed(1)
    expected = [torch.rand(2) for _ in range(3)]
    torch.manual_seed(1)
    drawn = [torch.rand(2)]
    engine.fit(cfg)  # seeds the run with its own seed
    drawn.append(torch.rand(2))
    engine.evaluate_checkpoint(cfg.run_dir)
    drawn.append(torch.rand(2))
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))  # the numbers of a notebook that had not run them


@pytest.mark.parametrize("method", ["evp", "vp"])
def test_a_size_given_over_a_runs_config_has_the_model_fill_the_others_again(tmp_path, method):
    from vprompt.build import planned_sizes

    def less(settings, *keys):
        return {k: v for k, v in settings.items() if k not in keys}

    def fresh(**given):
        return resolve_config({"model": "cifar:resnet20", "dataset": "mnist", "method": method, **given})

    def sizes(cfg):  # as the run sets them, from the model's own input size (32)
        return {k: getattr(cfg, k) for k in ("input_size", "inner_size", "prompt_size")} | planned_sizes(cfg, 32)

    run = fresh()
    filled = planned_sizes(run, 32)
    for key, value in filled.items():  # as build_prompter records them
        setattr(run, key, value)
    run.record_filled(filled)
    assert run.prompt_size == 4 and sizes(fresh(input_size=48))["prompt_size"] == 6
    saved = tmp_path / "config.yaml"
    # (and as saved before runs recorded what was filled in: no recipe_filled, the model's input size beside; or
    # with a recipe_filled without its method, model and sizes, as runs saved it for a while)
    as_saved, unnamed = run.to_dict(), less(run.recipe_filled, "method", "model", *SIZE_KEYS)
    for recorded in (as_saved, {**as_saved, "recipe_filled": unnamed}, less(as_saved, "recipe_filled")):
        saved.write_text(yaml.safe_dump({"config": recorded, "model_input_size": 32, "argv": ["vprompt", "train"]}))
        args = cli.build_parser().parse_args(["train", "-c", str(saved), "--input-size", "48"])
        for given in (run.replace(input_size=48), resolve_config(cli._run_values(args)[0])):
            assert sizes(given) == sizes(fresh(input_size=48))  # not the border of 32 pixels', nor refused
    assert sizes(run.replace(prompt_size=2)) == sizes(fresh(prompt_size=2))
    mine = fresh(input_size=48, prompt_size=5)  # sizes the user gave stay
    assert sizes(mine.replace(input_size=40))["prompt_size"] == 5
    if method == "evp":  # one of EVP's two sizes replaces both, as over a config file (None gives none)
        assert sizes(fresh(inner_size=20).replace(prompt_size=5)) == sizes(fresh(prompt_size=5))
        assert fresh(inner_size=20).replace(prompt_size=None).inner_size == 20
        assert fresh(head="linear").replace(label_map=None).head == "linear"
        mine = {**fresh(inner_size=20).to_dict(), "input_size": 40, "prompt_size": 10}  # a run's: inner given
        mine = less(mine, "recipe_filled")  # (as saved before runs recorded it)
        legacy = with_filled_recorded(mine, 40)["recipe_filled"]
        assert (legacy["model"], legacy["input_size"], legacy["prompt_size"]) == ("cifar:resnet20", 40, 10)
        assert "inner_size" not in legacy and resolve_config({**mine, "recipe_filled": legacy}).inner_size == 20
        assert "model" not in with_filled_recorded(mine, 10**9)["recipe_filled"]  # (no model's input size)


@pytest.mark.parametrize(
    "setting,told",
    [
        ("precision: fp8", "precision 'fp8' is not one of fp32, bf16, fp16"),
        ("optimizer: adam", "optimizer 'adam' is not one of normgrad, sgd, adamw; did you mean adamw?"),
        ("schedule: cosin", "schedule 'cosin' is not one of cosine_epoch, cosine, constant; did you mean cosine?"),
    ],
)
def test_config_file_with_a_value_not_among_the_choices_fails_before_the_run_starts(tmp_path, capsys, setting, told):
    config = tmp_path / "bad.yaml"
    config.write_text(setting + "\n")
    assert cli.main(tiny_run_args(tmp_path, "--config", str(config))) == 2
    err = capsys.readouterr().err
    assert f"{config}: {told}" in err.strip().splitlines()[-1], err
    assert not (tmp_path / "run").exists()


def test_the_configs_prompter_names_are_the_prompters():
    from vprompt.config import PROMPTERS
    from vprompt.prompters import list_prompters

    assert sorted(PROMPTERS) == list_prompters()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: abc", "epochs 'abc' must be an integer"),
        ("shots: none", "shots 'none' must be an integer (or null, YAML's none, to leave it unset)"),
        ("batch_size: none", "batch_size 'none' must be an integer"),  # (never unset)
        ("lr: fast", "lr 'fast' must be a finite number"),
        ("batch_size: 8.5", "batch_size 8.5 must be an integer"),
        ("epochs: -1", "epochs -1 must be at least 0"),
        ("val_fraction: 1.5", "val_fraction 1.5 must be in [0, 1)"),
        ("momentum: 1.5", "momentum 1.5 must be in [0, 1)"),
        ("download: maybe", "download 'maybe' must be true or false"),
        ("name: ../elsewhere", "name '../elsewhere' must be a folder name inside --output, without / or \\"),
        ("name: ..", "name '..' must be a folder name inside --output, without / or \\"),
        (
            "method: [evp]",
            "method ['evp'] must be a single value (one of evp, fixed_patch, linprobe, random_patch, vp, zeroshot)",
        ),
        (
            "shots: 4\ntrain_fraction: 0.5",
            "shots 4 and train_fraction 0.5 together: give one of them, K images per "
            "class or a share of each class (none undoes one given in a config file)",
        ),
    ],
)
def test_config_file_values_of_the_wrong_type_or_range_name_file_and_key(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    with pytest.raises(ValueError) as info:
        resolve_config(load_yaml(bad), source=str(bad))
    assert str(info.value) == f"{bad}: {message}"


def test_a_config_files_method_of_the_wrong_shape_is_replaced_by_the_method_flag(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("method: {name: evp}\n")
    assert cli.main(tiny_run_args(tmp_path, "--config", str(config), "--method", "vp", epochs=1)) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "vp"


def test_a_run_name_that_would_leave_the_output_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli.main(tiny_run_args(out, name="../escaped")) == 2
    assert "--name '../escaped' must be a folder name inside --output" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not out.exists()


def test_a_config_file_that_is_not_yaml_or_is_a_folder_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\nlr: 2\n")
    with pytest.raises(ValueError) as info:
        load_yaml(bad)
    assert (
        str(info.value) == f"config file {bad} is not valid YAML at line 2, column 3: expected ',' or ']', but got ':'"
    )
    with pytest.raises(FileNotFoundError, match=re.escape(f"config file {tmp_path} is a folder; give a YAML file")):
        load_yaml(tmp_path)
    bad.write_bytes(b"\xff\xfe lr: 1\n")  # UTF-16, say
    with pytest.raises(
        ValueError, match=re.escape(f"config file {bad} is not UTF-8 text (invalid start byte at byte 0)")
    ):
        load_yaml(bad)
    for text, where in (
        ("lr: 70\nepochs: 2\nlr: 7\n", "line 3, column 1"),
        ("m:\n  - {name: vp, lr: 1, lr: 2}\n", "line 2, column 23"),
    ):
        bad.write_text(text)  # the last would win unseen
        with pytest.raises(ValueError, match=re.escape(f"{bad} is not valid YAML at {where}: 'lr' is given twice")):
            load_yaml(bad)
    bad.write_text("base: &b {lr: 1, epochs: 2}\nother:\n  <<: *b\n  lr: 3\n")  # a merge's key may be overridden
    assert load_yaml(bad)["other"] == {"lr": 3, "epochs": 2}
    bad.write_text("warmup-steps: 10\nwarmup_steps: 20\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}: 'warmup_steps' is given twice (with - and with _)")):
        load_yaml(bad)


def test_a_bad_dataset_option_value_names_the_config_file_it_came_from(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_options: {n_train: many, n_test: 8}\n")
    args = [*tiny_run_args(tmp_path, "--dataset", "synthetic", "--device", "cpu"), "-c", str(config)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{config}: dataset synthetic: --dataset-option n_train='many' must be a whole number" in err, err
    assert cli.main([*args, "--dataset-option", "n_train=x"]) == 2  # given on the command line: no file named
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--dataset-option n_train='x' must be" in err and str(config) not in err, err
    config.write_text("dataset_options: {n_trian: 8}\n")  # an option the dataset does not have
    assert cli.main(args) == 2
    assert f"{config}: dataset 'synthetic' has no option 'n_trian'" in capsys.readouterr().err
    config.write_text("dataset: mnsit\n")  # and a dataset the file names
    assert cli.main([a for a in args if a not in ("--dataset", "synthetic")]) == 2
    assert f"{config}: unknown dataset 'mnsit'; did you mean mnist?" in capsys.readouterr().err


def test_settings_are_typed_and_range_checked_whatever_their_source(tmp_path, capsys):
    assert resolve_config({"lr": "1e-3", "epochs": "3"}).lr == 1e-3  # YAML reads 1e-3 as a string
    assert resolve_config({"method": "vp", "epochs": 2.0, "warmup_steps": "1e3"}).warmup_steps == 1000  # an integer
    assert resolve_config({"seed": 2**53 + 1, "split_seed": "12345678901234567891"}).split_seed == 12345678901234567891
    assert resolve_config({"seed": 2**53 + 1}).seed == 2**53 + 1  # exact, not through a float
    for bad in ({"lr": float("nan")}, {"lr": "inf"}, {"epochs": 1.5}, {"epochs": True}):
        with pytest.raises(ValueError, match="must be (a finite number|an integer)"):
            resolve_config(bad)
    for flag, value, named in (("--epochs", "-1", "--epochs"), ("--eval-batch-size", "0", "--eval-batch-size"),
                               ("-b", "0", "--batch-size"), ("--workers", "-1", "--workers")):  # fmt: skip
        assert cli.main(tiny_run_args(tmp_path, flag, value)) == 2
        err = capsys.readouterr().err
        assert f"{named} {value} must be at least" in err.splitlines()[-1], err
        assert not (tmp_path / "run").exists()
    assert cli.main(tiny_run_args(tmp_path, "--device", "gpu")) == 2
    err = capsys.readouterr().err
    assert "--device 'gpu' is not a device; use cpu, cuda" in err, err
    # Any integer seeds a run: PyTorch takes 64 bits, and larger seeds wrap as negative ones do.
    assert cli.main(tiny_run_args(tmp_path, "--seed", str(2**70 + 5), "--split-seed", "-3", name="big", epochs=1)) == 0


def test_a_setting_the_run_would_not_use_is_refused_where_it_was_given():
    for given, told in (
        ({"warmup_steps": 100}, "--warmup-steps 100: only schedule cosine warms up, not cosine_epoch"),
        ({"weight_decay": 0.1}, "--weight-decay 0.1: the normalized gradient has none"),
        (
            {"momentum": 0.5, "optimizer": "adamw", "lr": 0.1},
            "--momentum 0.5: only optimizer sgd has momentum, not adamw",
        ),
        ({"method": "vp", "inner_size": 20}, "--inner-size 20: EVP's shrunk image; prompter pad adds"),
        ({"di_prob": 0.2}, "--di-prob 0.2: only diversity di resizes and pads, not ref"),
        ({"head_lr": 0.1}, "--head-lr 0.1: only head linear is trained with its own lr, not text"),
        ({"model": "cifar:resnet20", "ilm_interval": 3}, "--ilm-interval 3: only label map ilm is recomputed, not flm"),
        (
            {"model": "cifar:resnet20", "method": "zeroshot", "label_map": "ilm", "ilm_interval": 3},
            "--ilm-interval 3: ILM recomputes its map between training epochs; with none it is computed once",
        ),
        ({"model": "cifar:resnet20", "templates": "ensemble"}, "--templates ensemble: the text prompts of a CLIP"),
        ({"head": "linear", "templates": "single"}, "--templates single: the text prompts of a CLIP text head, not"),
        ({"l2_grid": [0.1, 1]}, "--l2-grid 0.1,1: the L2 strengths of method linprobe, not evp"),
        ({"method": "zeroshot", "eval_every": 3}, "--eval-every 3: how often training epochs are validated; a run"),
        ({"method": "linprobe", "eval_every": 2}, "--eval-every 2: how often training epochs are validated; a run"),
        ({"method": "linprobe", "deterministic": True}, "--deterministic: a linear probe fits logistic regression"),
        ({"val_fraction": 0, "eval_every": 5}, "--eval-every 5: how often training epochs are validated; --val-fra"),
    ):
        with pytest.raises(ValueError, match=re.escape(f"command line: {told}")):
            resolve_config(given, source="command line")
    with pytest.raises(ValueError, match="--lr: optimizer adamw needs its own; method evp's lr 70 is a step size"):
        resolve_config({"optimizer": "adamw"}, source="command line")  # not EVP's 70 for the normalized gradient
    # what the recipes fill in is not the user's, and where a setting is used it is taken
    assert resolve_config({"method": "vp", "schedule": "constant"}).warmup_steps == 1000
    sgd = resolve_config({"optimizer": "sgd", "lr": 1.0, "momentum": 0.5, "weight_decay": 0.1, "schedule": "cosine",
                          "warmup_steps": 5})  # fmt: skip
    assert (sgd.momentum, sgd.weight_decay, sgd.warmup_steps) == (0.5, 0.1, 5)
    used = resolve_config({"model": "cifar:resnet20", "label_map": "ilm", "ilm_interval": 3, "diversity": "di",
                           "di_prob": 0.2, "di_min_scale": 0.5})  # fmt: skip
    assert (used.ilm_interval, used.di_prob, used.di_min_scale) == (3, 0.2, 0.5)
    assert resolve_config({"head": "linear", "head_lr": 0.1}).head_lr == 0.1
    assert resolve_config({"head": "linear", "weight_decay": 0.1}).weight_decay == 0.1  # the head's AdamW decays
    assert resolve_config({"method": "zeroshot", "templates": "imagenet80"}).templates == "imagenet80"
    assert resolve_config({"method": "linprobe", "l2_grid": [0.1]}).l2_grid == [0.1]
    # a finished run's saved settings are evaluated as they were
    assert resolve_config({"warmup_steps": 100}, check_unused=False).warmup_steps == 100


def test_an_output_that_is_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "afile").write_text("notes")
    args = tiny_run_args(tmp_path / "afile" / "runs", epochs=1)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'afile'} is a file, and runs are written to a folder; give another --output" in err
    assert (tmp_path / "afile").read_text() == "notes"
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"base": {"model": TINY_MODEL}, "datasets": ["synthetic"], "methods": ["evp"]}))
    for command in (["suite", str(suite)], ["demo"]):  # refused before any run, in one line
        assert cli.main([*command, "--output", str(tmp_path / "afile" / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{tmp_path / 'afile'} is a file, and runs are written to a folder; give another --output")


def test_an_output_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import vprompt.checkpoint as checkpoint

    locked = tmp_path / "locked"
    locked.mkdir()  # (as root every folder is writable: the permission is what os.access says)
    monkeypatch.setattr(checkpoint.os, "access", lambda path, mode: Path(path) != locked)
    for command in (tiny_run_args(locked / "runs", epochs=1), ["demo", "--output", str(locked / "demo")]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err.strip()
        assert f"no permission to write in {locked}; give another --output" in err
        assert list(locked.iterdir()) == []


def test_a_head_is_checked_where_it_was_given_and_before_the_model_is_built():
    for key, bad, hint in (("head", "lineer", "linear"), ("label_map", "ilmm", "ilm")):
        with pytest.raises(ValueError, match=rf"h\.yaml: {key} '{bad}' is not one of .*; did you mean {hint}\?"):
            resolve_config({key: bad}, source="h.yaml")
    with pytest.raises(ValueError, match=r"h\.yaml: label_map ilm conflicts with head linear; give only one"):
        resolve_config({"model": "cifar:resnet20", "head": "linear", "label_map": "ilm"}, source="h.yaml")
    sources = {"label_map": "command line", "head": "h.yaml"}  # each named where it was given
    with pytest.raises(ValueError, match=r"^command line: --label-map ilm conflicts with head linear"):
        resolve_config({"head": "linear", "label_map": "ilm"}, sources=sources)
    with pytest.raises(ValueError, match=r"^command line: --label-map ilm conflicts with --head linear"):
        resolve_config({"head": "linear", "label_map": "ilm"}, source="command line")  # (each as it was given)
    with pytest.raises(ValueError, match=r"^command line: --shots 4 and --train-fraction 0.5 together"):
        resolve_config({"shots": 4, "train_fraction": 0.5}, source="command line")


def test_list_commands(capsys):
    def listed(what: str) -> str:
        assert cli.main(["list", what]) == 0
        return capsys.readouterr().out

    assert "evp" in listed("methods")
    datasets = listed("datasets")
    assert "cifar100" in datasets and "imagefolder" in datasets and "synthetic" in datasets
    models = listed("models")
    assert "ViT-B-32: openai" in models and TINY_MODEL in models
    # each source says what it is: timm's names are a few examples of all it has (the list read as all there is)
    assert "# timm: timm classifiers: any timm name, of which a few follow" in models
    assert "# cifar: CIFAR-10 ResNets (--pretrained FILE | FOLDER | cifar10 | none)" in models


def test_config_file_gives_defaults_and_cli_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": TINY_MODEL, "dataset": "synthetic", "epochs": 1, "lr": 3.0,
                                        "dataset_options": {"n_train": 40, "n_test": 20}}))  # fmt: skip
    assert cli.main(["train", "-c", str(cfg_file), "--lr", "5", "--output", str(tmp_path), "--name", "c"]) == 0
    saved = yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["config"]
    assert saved["lr"] == 5.0 and saved["epochs"] == 1 and saved["dataset_options"]["n_train"] == 40
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown setting 'learning_rate' \(settings are the flags' nam"):
        resolve_config(load_yaml(bad), source=str(bad))


def test_shipped_paper_configs_resolve_to_the_paper_settings():
    evp = resolve_config(load_yaml(shipped_configs()["evp_clip_vitb32"]))
    assert (evp.method, evp.lr, evp.epochs, evp.batch_size, evp.seed) == ("evp", 70.0, 1000, 256, 42)
    assert (evp.input_size, evp.inner_size, evp.prompt_size, evp.optimizer) == (224, 164, 30, "normgrad")
    vp = resolve_config(load_yaml(shipped_configs()["vp_clip_vitb32"]))
    assert (vp.prompter, vp.lr, vp.momentum, vp.warmup_steps, vp.prompt_size) == ("pad", 40.0, 0.9, 1000, 30)


@pytest.mark.parametrize("flag", ["--label-map=ilm", "--head=linear", "--templates=single", "--ilm-interval=2"])
def test_linprobe_refuses_the_options_of_a_prompted_models_head(flag, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["linprobe", flag])
    assert "unrecognized arguments" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["zeroshot", flag])  # zero-shot and train keep them


def test_eval_refuses_a_prompt_whose_classes_are_in_another_order(tmp_path, monkeypatch):
    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 0
    real = engine.load_prompt

    def reordered(path):
        state, config, meta = real(path)
        return state, config, {**meta, "classnames": list(reversed(meta["classnames"]))}

    monkeypatch.setattr(engine, "load_prompt", reordered)
    with pytest.raises(ValueError, match="classes are in another order than those the prompt was trained on"):
        engine.evaluate_checkpoint(tmp_path / "run")


def test_the_epoch_is_selected_on_validation_and_the_last_one_reported_beside_it(tmp_path, monkeypatch):
    from vprompt.checkpoint import PROMPT_FILE, load_prompt

    real, val_accuracies = engine.evaluate, iter([90.0, 50.0, 40.0])  # validation falls after epoch 1
    sizes: dict[str, set[int]] = {}  # the images each split's evaluation read

    def evaluate(model, loader, device, precision, env, desc="eval"):
        sizes.setdefault(desc, set()).add(sum(len(y) for _, y in loader))
        result = real(model, loader, device, precision, env, desc=desc)
        return {**result, "acc1": next(val_accuracies)} if desc == "val" else result

    monkeypatch.setattr(engine, "evaluate", evaluate)
    assert cli.main(tiny_run_args(tmp_path, "--device", "cpu", epochs=3)) == 0
    held_out = json.loads((tmp_path / "run" / "splits.json").read_text())["val"]
    assert sizes["val"] == {len(held_out)} and sizes["test (best)"] == {
        48
    }  # (the splits differ in size: which was read)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    _, _, meta = load_prompt(tmp_path / "run" / PROMPT_FILE)
    assert results["best_epoch"] == meta["epoch"] == 1 and results["selection"] == "val"
    assert results["test"]["loss"] != results["test_last"]["loss"]  # the prompt of epoch 1, not of epoch 3


def test_each_validation_of_a_run_is_evaluated_once_and_reported_as_the_epochs_recorded_it(tmp_path, monkeypatch):
    real, descs = engine.evaluate, []

    def evaluate(model, loader, device, precision, env, desc="eval"):
        descs.append(desc)
        return real(model, loader, device, precision, env, desc=desc)

    monkeypatch.setattr(engine, "evaluate", evaluate)
    assert cli.main(tiny_run_args(tmp_path, "--device", "cpu", epochs=3)) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    records = {r["epoch"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    tests = ["test (last)"] + (["test (best)"] if results["best_epoch"] != 3 else [])
    assert descs == ["val"] * 3 + tests  # the final report reads the validation of the epochs
    for key, epoch in (("val", results["best_epoch"]), ("val_last", 3)):
        assert results[key]["acc1"] == records[epoch]["val_acc1"] and results[key]["loss"] == records[epoch]["val_loss"]


def test_a_head_on_the_command_line_replaces_a_config_files_label_map(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("label_map: flm\nmodel: cifar:resnet20\n")
    args = cli.build_parser().parse_args(["train", "-c", str(config), "--head", "linear"])
    values, sources = cli._run_values(args)
    assert (values.get("head"), values.get("label_map"), sources["head"]) == ("linear", None, "command line")
    args = cli.build_parser().parse_args(["train", "-c", str(config), "--label-map", "ilm"])
    assert cli._run_values(args)[0]["label_map"] == "ilm"


def test_one_of_evps_sizes_on_the_command_line_replaces_both_of_a_config_files(tmp_path):
    args = cli.build_parser().parse_args(["train", "-c", str(shipped_configs()["evp_clip_vitb32"]),
                                          "--inner-size", "180"])  # fmt: skip
    values, sources = cli._run_values(args)
    cfg = resolve_config(values, "command line", sources)
    assert (cfg.input_size, cfg.inner_size, cfg.prompt_size) == (224, 180, None)  # its border: the 22 pixels left
    # VP's border is no EVP size: a later inner_size (meant for EVP) leaves it alone
    assert under({"inner_size": 16}, {"method": "vp", "prompt_size": 6}) == {"method": "vp", "prompt_size": 6}
    assert under({"inner_size": 16}, {"prompt_size": 6}) == {}  # (the default method, EVP)


def test_a_run_folder_in_use_by_another_process_is_refused_and_left_alone(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("the other run's log\n")
    with open(run / runs.LOCK_FILE, "a") as held:  # as another process running there holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 2
        assert f"run folder {run} is in use: another process is running there" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [runs.LOCK_FILE, "log.txt"]
    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 0  # free again
    assert (run / "results.json").is_file()


def test_a_name_that_is_not_utf8_reaches_the_run_log_escaped(tmp_path):
    # In a process of its own: pytest would keep the raw name among its captured records, which pytest-xdist cannot send
    code = (
        "import os, pathlib; from vprompt import engine; from vprompt.distributed import DistEnv\n"
        f"engine.setup_logging(pathlib.Path({str(tmp_path)!r}), DistEnv())\n"
        "engine._log.info('class folder %s', os.fsdecode(b'caf\\xe9'))  # as a Latin-1 folder name is listed"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "class folder caf\\udce9" in (tmp_path / "log.txt").read_text()
    err = done.stderr.decode("utf-8")  # (strictly: an unescaped name would not decode)
    assert "class folder caf\\udce9" in err and "Logging error" not in err


def test_output_read_only_in_part_ends_quietly():
    # `vprompt list models | head -0`: the reader closes the pipe before the first line (written after the imports)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (output held until exit, as usual)
    proc = subprocess.Popen([sys.executable, "-m", "vprompt", "list", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_tilde_in_a_config_files_output_or_resume_is_the_home_folder(tmp_path, monkeypatch):
    from vprompt.runs import continues_own_run, resume_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # (no shell expands a file's ~: it was a folder called ~ here)
    cfg = resolve_config({"output": "~/runs", "name": "a", "model": TINY_MODEL, "dataset": "synthetic"})
    assert cfg.run_dir == tmp_path / "home" / "runs" / "a"
    cfg.run_dir.mkdir(parents=True)
    torch.save({}, cfg.run_dir / "last.pt")
    assert continues_own_run(cfg.replace(resume="~/runs/a"))
    assert resume_path(cfg.replace(name="b", resume="~/runs/a")) == cfg.run_dir / "last.pt"


def test_a_head_the_model_or_the_run_cannot_take_is_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "build_backbone", lambda *a, **k: pytest.fail("the model was built (or downloaded)"))
    base = ["zeroshot", "--dataset", "synthetic", "--output", str(tmp_path)]
    for flags, told in (
        (["--model", TINY_MODEL, "--label-map", "flm"], f"{TINY_MODEL!r} is a clip model (use --head text)"),
        (["--model", "cifar:resnet20", "--head", "text"], "--head text needs a CLIP model; 'cifar:resnet20' is a"),
        (["--model", TINY_MODEL, "--head", "linear"], "--head linear is trained with the prompt, and zeroshot trains"),
    ):
        assert cli.main([*base, *flags]) == 2
        assert told in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_eval_with_other_weights_than_the_runs_is_told(tmp_path, vprompt_caplog):
    from vprompt.cifar_resnet import create_cifar_resnet

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        torch.save(create_cifar_resnet(20).state_dict(), tmp_path / name / "w.th")
    weights = str(tmp_path / "a" / "w.th")
    args = ["zeroshot", "--model", "cifar:resnet20", "--pretrained", weights, "--dataset", "synthetic",
            "--label-map", "identity", "--output", str(tmp_path), "--name", "zs"]  # fmt: skip
    assert cli.main(args) == 0
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "zs"), "--pretrained", weights]) == 0
    assert "the same weights under another name" not in vprompt_caplog.text
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "zs"), "--pretrained", str(tmp_path / "b" / "w.th")]) == 0
    told = f"the run was trained with {weights!r}, to whose outputs its prompt and head were fitted"
    assert told in vprompt_caplog.text
    vprompt_caplog.clear()  # random weights, however they are named, are the run's own
    assert cli.main([*args[:4], "none", *args[5:-1], "random"]) == 0
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "random"), "--pretrained", "false"]) == 0
    assert "the same weights under another name" not in vprompt_caplog.text
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "random"), "--pretrained", weights]) == 0
    assert "the run was trained with random weights, to whose" in vprompt_caplog.text


def test_eval_with_weights_of_other_classes_names_the_weights_not_a_damaged_prompt(tmp_path, capsys):
    from vprompt.cifar_resnet import CifarResNet

    for classes in (10, 12):
        torch.save(CifarResNet(20, classes).state_dict(), tmp_path / f"w{classes}.th")
    args = ["train", "--model", "cifar:resnet20", "--pretrained", str(tmp_path / "w10.th"), "--dataset", "synthetic",
            "--dataset-option", "n_train=40", "--dataset-option", "n_test=20", "--head", "linear", "--epochs", "1",
            "--output", str(tmp_path), "--name", "lin", "--log-every", "0"]  # fmt: skip
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "lin"), "--pretrained", str(tmp_path / "w12.th")]) == 2
    err = capsys.readouterr().err
    assert f"error: --pretrained {tmp_path / 'w12.th'}: the prompt and head of " in err, err
    assert "edited or damaged" not in err


def test_a_setting_from_a_file_refused_as_the_run_starts_names_the_file(tmp_path, capsys):
    file = tmp_path / "f.yaml"
    file.write_text("model: cifar:resnet20\npretrained: random\ndataset: synthetic\ninner_size: 24\nprompt_size: 4\n")
    args = ["train", "-c", str(file), "--input-size", "48", "--output", str(tmp_path)]
    assert cli.main(args) == 2
    told = f"{file}: inner_size 24 and prompt_size 4 disagree at input_size 48: EVP needs inner = input - 2 * prompt"
    assert told in capsys.readouterr().err
    assert cli.main([*args, "--inner-size", "24", "--prompt-size", "4"]) == 2  # typed: named by its flags
    assert "error: --inner-size 24 and --prompt-size 4 disagree" in capsys.readouterr().err


def test_a_training_loss_that_is_not_finite_stops_the_run_naming_the_likely_causes(tmp_path, capsys):
    from vprompt.backbones import create_backbone

    weights = tmp_path / "nan_resnet.th"
    state = create_backbone("cifar:resnet20").model.state_dict()
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, weights)
    args = tiny_run_args(tmp_path, "--model", "cifar:resnet20", "--pretrained", str(weights), "--label-map", "rlm")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"epoch 1: the training loss is nan; lower --lr 70, or check the weights in {weights} (--pretrained)" in err
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "prompt.safetensors").exists()
    args = tiny_run_args(tmp_path, "--method", "vp", "--lr", "1e38", "--head", "linear", "--name", "fast", epochs=1)
    assert cli.main(args) == 2  # (no weights file: the rates are named, of the prompt and of the trained head)
    assert "the training loss is nan; lower --lr 1e+38 or --head-lr 0.001; the run stopped" in capsys.readouterr().err


def test_a_resume_path_that_holds_no_training_state_says_what_resume_takes(tmp_path, capsys):
    assert cli.main(tiny_run_args(tmp_path, "--resume", "lastest")) == 2
    err = capsys.readouterr().err
    assert "--resume lastest: no training state at lastest; give 'latest' (this run's own) or the path of" in err


def test_shots_of_zero_from_a_config_file_is_refused_naming_the_file(tmp_path):
    # shots 0 is no few-shot setting: refused with the file named, before any data is read, as --shots 0 is.
    path = tmp_path / "few.yaml"
    path.write_text("shots: 0\n")
    with pytest.raises(ValueError, match=r"few.yaml: shots 0 must be at least 1"):
        resolve_config(load_yaml(path), source=str(path))
    assert resolve_config(load_yaml(path) | {"shots": 1}).shots == 1


def test_the_last_epoch_is_validated_and_may_be_selected_whatever_eval_every(tmp_path, monkeypatch):
    real, val_accuracies = engine.evaluate, iter([50.0, 90.0])  # epochs 2 and 3 validated; 3 is the best

    def evaluate(model, loader, device, precision, env, desc="eval"):
        result = real(model, loader, device, precision, env, desc=desc)
        return {**result, "acc1": next(val_accuracies)} if desc == "val" else result

    monkeypatch.setattr(engine, "evaluate", evaluate)
    assert cli.main(tiny_run_args(tmp_path, "--device", "cpu", "--eval-every", "2", epochs=3)) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [2, 3]  # every 2nd epoch, and the last
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["best_epoch"] == 3 and results["selection"] == "val"
    assert results["test"] == results["test_last"]


def test_on_a_tie_in_validation_accuracy_the_earlier_epoch_is_kept(tmp_path, monkeypatch):
    real, val_accuracies = engine.evaluate, iter([70.0, 70.0, 60.0])  # epochs 1 and 2 tie

    def evaluate(model, loader, device, precision, env, desc="eval"):
        result = real(model, loader, device, precision, env, desc=desc)
        return {**result, "acc1": next(val_accuracies)} if desc == "val" else result

    monkeypatch.setattr(engine, "evaluate", evaluate)
    assert cli.main(tiny_run_args(tmp_path, "--device", "cpu", epochs=3)) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["best_epoch"] == 1 and results["selection"] == "val"


def test_a_shipped_config_is_found_by_its_name_wherever_vprompt_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # away from the source tree
    assert set(shipped_configs()) == {"evp_clip_vitb32", "vp_clip_vitb32", "suite_clip_vitb32"}
    assert (
        load_yaml("evp_clip_vitb32")
        == load_yaml("evp_clip_vitb32.yaml")
        == load_yaml(shipped_configs()["evp_clip_vitb32"])
    )
    assert load_yaml("evp_clip_vitb32")["lr"] == 70
    (tmp_path / "evp_clip_vitb32.yaml").write_text("lr: 3\n")  # a file of the name given wins
    assert load_yaml("evp_clip_vitb32.yaml") == {"lr": 3}
    with pytest.raises(FileNotFoundError, match=r"evp_clip_vit does not exist; the shipped configs are evp_clip"):
        load_yaml("evp_clip_vit")
    with pytest.raises(FileNotFoundError, match=r"sub/evp_clip_vitb32 does not exist$"):  # a path is only a path
        load_yaml("sub/evp_clip_vitb32")
    assert cli.main(["list", "configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == sorted(shipped_configs())
    assert any(line.startswith("evp_clip_vitb32") and "EVP on CLIP ViT-B/32" in line for line in listed)


def test_eval_on_the_val_split_compares_the_validation_images_alone(tmp_path, capsys):
    from PIL import Image

    def write(split, cls, i):
        (data / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (40 * i % 256, 100 if cls == "a" else 200, 0)).save(data / split / cls / f"{i}.png")

    data = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                write(split, cls, i)
    args = ["--dataset", "imagefolder", "--data-dir", str(data), "--workers", "0"]
    assert cli.main(tiny_run_args(tmp_path, *args, epochs=1)) == 0
    run = str(tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", run, "--split", "val", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    write("train", "a", 9)  # a training image added: the validation split is still the run's own
    assert cli.main(["eval", "--checkpoint", run, "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == val and val["n"] == 4
    assert cli.main(["eval", "--checkpoint", run, "--split", "train"]) == 2  # the training split is not
    assert "train images: 8 then, 9 now" in capsys.readouterr().err
    (data / "train" / "a" / "9.png").unlink()
    (data / "val" / "b" / "1.png").rename(data / "val" / "b" / "7.png")  # a validation image renamed: refused
    assert cli.main(["eval", "--checkpoint", run, "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "--split val: the data differ from those" in err and "other files, pixels or labels" in err, err


def test_a_run_without_a_validation_split_says_it_keeps_its_last_epoch(tmp_path, vprompt_caplog):
    assert cli.main(tiny_run_args(tmp_path, "--val-fraction", "0", epochs=2)) == 0
    assert "at epoch 2 (the last, no validation split); last epoch test acc" in vprompt_caplog.text
    assert json.loads((tmp_path / "run" / "results.json").read_text())["selection"] == "last"
