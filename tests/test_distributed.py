"""Two processes (torchrun, gloo on the CPU) take the same steps as one process with the same global batch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import tiny_run_args


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    # Input diversity is drawn for the whole batch, each process taking its share, so its images are resized and
    # placed as in one process. VP's optimizer has state (momentum), so it checks the averaged gradient too.
    common = ("--method", "vp", "--warmup-steps", "2", "--diversity", "di", "--di-prob", "0.8", "--lr", "1")
    single = subprocess.run(
        [sys.executable, "-m", "vprompt", *tiny_run_args(tmp_path, *common, name="one", epochs=2)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "vprompt",
         *tiny_run_args(tmp_path, *common, name="two", epochs=2)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr
    assert multi.stdout.count("run folder:") == 1  # printed by the first process only

    def prompt(name):
        return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]["prompter.prompt"]

    assert torch.allclose(prompt("one"), prompt("two"), atol=1e-5, rtol=1e-4)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["test"]["n"] == one["test"]["n"] == 48  # every test image counted once across processes
    assert two["test"]["acc1"] == pytest.approx(one["test"]["acc1"])
    assert two["n_train"] % 2 == 0  # so that no padding is needed: training metrics summed over both processes
    for a, b in zip(*(_metrics(tmp_path / name) for name in ("one", "two")), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4) and b["train_acc1"] == a["train_acc1"]

    # 33 training images, batch 32: unpadded shards of 17 and 16 would take 2 and 1 steps, and the first process
    # would wait in the gradient all-reduce for ever.
    odd = ("--dataset", "synthetic", "--dataset-option", "n_train=33", "--dataset-option", "n_test=8",
           "--val-fraction", "0")  # fmt: skip
    uneven = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "vprompt",
         *tiny_run_args(tmp_path, *common, *odd, name="odd", epochs=1)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert uneven.returncode == 0, uneven.stderr
    assert _metrics(tmp_path / "odd")[0]["epoch"] == 1


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
