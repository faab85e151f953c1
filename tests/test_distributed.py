"""Two processes (torchrun, gloo on the CPU) take the same steps as one process with the same global batch."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import shared_data, tiny_run_args


def _torchrun() -> Path:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    return torchrun if torchrun.exists() else Path(shutil.which("torchrun"))


def _train(tmp_path: Path, processes: int, *args: str, name: str, epochs: int = 2, timeout: int = 300) -> None:
    launch = [sys.executable, "-m", "vprompt"] if processes == 1 else [
        str(_torchrun()), "--standalone", "--nproc-per-node", str(processes), "-m", "vprompt",
    ]  # fmt: skip
    done = subprocess.run(
        [*launch, *tiny_run_args(tmp_path, "--device", "cpu", *args, name=name, epochs=epochs)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run folder:") == 1  # printed by the first process only


def _prompt(run: Path) -> torch.Tensor:
    return torch.load(run / "last.pt", weights_only=True)["model"]["prompter.prompt"]


def _step_lines(run: Path) -> list[tuple[float, float]]:
    """(loss, accuracy) of each per-step line of the run's log.txt."""
    found = re.findall(r"epoch \d+ step \d+/\d+ loss ([\d.]+) acc ([\d.]+)", (run / "log.txt").read_text())
    return [(float(loss), float(acc)) for loss, acc in found]


def _assert_trained_alike(one: Path, two: Path, even: bool = True) -> None:
    assert torch.allclose(_prompt(one), _prompt(two), atol=1e-5, rtol=1e-4)
    a, b = (json.loads((run / "results.json").read_text()) for run in (one, two))
    assert b["test"]["n"] == a["test"]["n"]  # every test image counted once across processes
    assert b["test"]["acc1"] == pytest.approx(a["test"]["acc1"])
    assert (b["n_train"] % 2 == 0) == even  # whether the epoch was padded: metrics summed over both processes
    for x, y in zip(_metrics(one), _metrics(two), strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4) and y["train_acc1"] == x["train_acc1"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    _torchrun()
    # Input diversity is drawn for the whole batch, each process taking its share, so its images are resized and
    # placed as in one process. VP's optimizer has state (momentum), so it checks the averaged gradient too.
    common = ("--method", "vp", "--warmup-steps", "2", "--diversity", "di", "--di-prob", "0.8", "--lr", "1")
    _train(tmp_path, 1, *common, "--log-every", "1", name="one")
    _train(tmp_path, 2, *common, "--log-every", "1", name="two")
    _assert_trained_alike(tmp_path / "one", tmp_path / "two")
    # each step's line tells the loss and accuracy so far of the whole batch, not of the first process's share
    one, two = (_step_lines(tmp_path / run) for run in ("one", "two"))
    assert len(one) == len(two) >= 2
    for (loss_one, acc_one), (loss_two, acc_two) in zip(one, two):
        assert loss_two == pytest.approx(loss_one, abs=2e-4) and acc_two == acc_one
    assert json.loads((tmp_path / "two" / "results.json").read_text())["test"]["n"] == 48

    # 33 training images, batch 32: unpadded shards of 17 and 16 would take 2 and 1 steps, and the first process
    # would wait in the gradient all-reduce for ever. The image repeated to pad the epoch counts for nothing.
    odd = ("--dataset", "synthetic", "--dataset-option", "n_train=33", "--dataset-option", "n_test=8",
           "--val-fraction", "0")  # fmt: skip
    _train(tmp_path, 1, *common, *odd, name="odd-one", epochs=2)
    _train(tmp_path, 2, *common, *odd, name="odd-two", epochs=2, timeout=120)
    _assert_trained_alike(tmp_path / "odd-one", tmp_path / "odd-two", even=False)
    assert torch.load(tmp_path / "odd-two" / "last.pt", weights_only=True)["train_images"] == 66  # 2 epochs of 33


@pytest.mark.slow
def test_three_processes_evaluate_zero_shot_as_one_with_any_batch_size(tmp_path):
    _torchrun()
    # Nothing is trained: neither a batch of 2 for 3 processes nor evaluation batches of 32 (no multiple of 3) matter.
    common = ("--method", "zeroshot", "--epochs", "0", "-b", "2", "--eval-batch-size", "32")
    _train(tmp_path, 1, *common, name="one")
    _train(tmp_path, 3, *common, name="three")
    a, b = (json.loads((tmp_path / run / "results.json").read_text())["test"] for run in ("one", "three"))
    assert b["n"] == a["n"] == 48 and b["acc1"] == pytest.approx(a["acc1"])


def test_fewer_training_images_than_processes_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from vprompt import cli, engine
    from vprompt.distributed import DistEnv

    monkeypatch.setattr(engine, "init_distributed", lambda device: DistEnv(0, 3, 0))  # as the first of 3 processes
    args = tiny_run_args(tmp_path, "--dataset-option", "n_train=2", "--val-fraction", "0", "-b", "3")
    assert cli.main(args) == 2
    assert "2 training images for 3 processes: launch at most 2" in capsys.readouterr().err


def test_eval_refuses_torchrun(tmp_path, monkeypatch, capsys):
    from vprompt import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert "vprompt eval runs in one process; launch it without torchrun" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_compute_the_label_map_of_the_whole_training_set(tmp_path):
    _torchrun()
    data = shared_data()
    if not (data / "cifar10_resnets").is_dir() or not (data / "mnist").is_dir():
        pytest.skip("needs ../shared/data's CIFAR-10 ResNets and MNIST")
    # FLM is computed before the first step, with the zero prompt: the same map from the whole training set in one
    # process and in two, where each holds half of it (a map of one half would differ: 16 digits a class is few).
    common = ("--model", "cifar:resnet20", "--pretrained", str(data / "cifar10_resnets"), "--dataset", "mnist",
              "--data-dir", str(data / "mnist"), "--shots", "16", "--label-map", "flm")  # fmt: skip
    _train(tmp_path, 1, *common, name="one", epochs=1)
    _train(tmp_path, 2, *common, name="two", epochs=1)
    one, two = (
        torch.load(tmp_path / run / "last.pt", weights_only=True)["model"]["head.mapping"] for run in ("one", "two")
    )
    assert sorted(one.tolist()) == list(range(10)) and torch.equal(one, two)


@pytest.mark.slow
def test_two_processes_decode_image_files_as_one(tmp_path):
    _torchrun()
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png"
                )
    # ref diversity: a random crop of each decoded file (in the data workers), then a flip drawn for the batch.
    common = ("--method", "vp", "--warmup-steps", "2", "--diversity", "ref", "--lr", "1", "--dataset", "imagefolder",
              "--data-dir", str(tmp_path / "data"), "--val-fraction", "0", "--workers", "1", "-b", "8")  # fmt: skip
    _train(tmp_path, 1, *common, name="one")
    _train(tmp_path, 2, *common, name="two")
    _assert_trained_alike(tmp_path / "one", tmp_path / "two")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from vprompt import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    with pytest.raises(ValueError, match=r"local process 1 .* 1 GPU\(s\): pass --nproc-per-node 1 .*--device cpu"):
        distributed.init_distributed(None)


def test_processes_that_would_resume_from_different_epochs_are_refused(monkeypatch):
    from vprompt import engine
    from vprompt.distributed import DistEnv

    # As the first of 2 processes, which found last.pt at epoch 3 while the other (on another machine) found none.
    def all_reduce_sum(t, world_size):
        t[1] = -1
        return t

    monkeypatch.setattr(engine, "all_reduce_sum", all_reduce_sum)
    with pytest.raises(ValueError, match=r"process 0: epoch 3, process 1: no last.pt\).*filesystem all machines share"):
        engine._check_same_start(3, DistEnv(0, 2, 0), torch.device("cpu"))
    monkeypatch.setattr(engine, "all_reduce_sum", lambda t, world_size: t.fill_(3))
    engine._check_same_start(3, DistEnv(0, 2, 0), torch.device("cpu"))  # the same epoch: no error


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    from vprompt import engine
    from vprompt.distributed import DistEnv

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (no GPU is touched: devices are only named)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    second = DistEnv(1, 2, 1)
    assert engine.resolve_device("cuda", second) == engine.resolve_device(None, second) == torch.device("cuda", 1)
    assert engine.resolve_device("cuda:1", second) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="--device cuda:0 under torchrun: each process takes its own GPU"):
        engine.resolve_device("cuda:0", second)  # both processes on GPU 0
    assert engine.resolve_device("cuda:0", DistEnv()) == torch.device("cuda", 0)  # one process: any GPU


def test_a_device_index_the_machine_does_not_have_is_refused(monkeypatch):
    from vprompt import engine
    from vprompt.distributed import DistEnv

    for index in ("5", "1"):
        with pytest.raises(ValueError, match=f"--device cpu:{index}: the CPU is one device, cpu; --threads"):
            engine.resolve_device(f"cpu:{index}")  # (PyTorch takes it for the CPU)
    assert engine.resolve_device("cpu:0") == torch.device("cpu", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (no GPU is touched: devices are only named)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert engine.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 GPU\(s\), cuda:0 to cuda:1$"):
        engine.resolve_device("cuda:2")  # (PyTorch's own error, 'invalid device ordinal', came at the first tensor)
    assert engine.resolve_device("cuda:1", DistEnv(1, 2, 1)) == torch.device("cuda", 1)  # torchrun's check is its own


def test_a_run_on_a_gpu_other_than_the_first_makes_it_the_current_one(tmp_path, monkeypatch):
    """A loader pins its batches for the current GPU (PyTorch's pinning thread takes it): a run on cuda:1 makes
    cuda:1 current while it runs, or it would pin them for GPU 0 and take memory there for a CUDA context."""
    from vprompt import engine
    from vprompt.config import resolve_config

    from .conftest import TINY_MODEL

    class Entered(Exception):
        pass

    class Current:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            raise Entered(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (no GPU is touched: stopped as it is made current)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # (on a machine with fewer real GPUs, where an earlier test of this process used one, fit would save and restore
    # the random state of both pretended GPUs before it starts)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device", Current)
    for method in ("evp", "linprobe"):
        settings = {"model": TINY_MODEL, "dataset": "synthetic", "method": method, "device": "cuda:1"}
        cfg = resolve_config({**settings, "output": str(tmp_path), "name": method})
        with pytest.raises(Entered) as entered:
            engine.fit(cfg)
        assert entered.value.args[0] == torch.device("cuda", 1)
    with pytest.raises(Entered) as entered:  # and an evaluation (vprompt eval's), wherever it is called from
        engine.evaluate(torch.nn.Identity(), [], torch.device("cuda", 1))
    assert entered.value.args[0] == torch.device("cuda", 1)
