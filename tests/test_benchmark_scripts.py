"""The benchmark scripts refuse bad arguments with one line (exit status 2) before any work, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Small settings under every case, so that a check that no longer fires fails within the timeout, not after a benchmark.
BASE = {
    "reprogram_mnist.py": ["--output", "{tmp}/out", "--jobs", "1", "--sweep-epochs", "1", "--epochs", "1"],
    "speed_evp.py": ["--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--workers", "0"],
    "cpu_threads.py": ["--steps", "1", "--repeats", "1", "-b", "2"],
}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize(
    "script, args",
    [
        ("reprogram_mnist.py", "--adamw-lr -1"),
        ("reprogram_mnist.py", "--depths 33"),
        ("reprogram_mnist.py", "--chosen {tmp}/nope.json"),
        ("reprogram_mnist.py", "--chosen {tmp}/bad.json"),
        ("reprogram_mnist.py", "--chosen {tmp}/partial.json"),
        ("reprogram_mnist.py", "--chosen {tmp}/typed.json"),  # (a traceback, from the first arm)
        ("reprogram_mnist.py", "--chosen {tmp}/unknown.json"),  # (told after six arms had trained, as the demo's)
        ("reprogram_mnist.py", "--output {tmp}/afile"),
        ("reprogram_mnist.py", "--data-dir {tmp}/nowhere"),
        ("speed_evp.py", "--steps 0"),
        ("speed_evp.py", "--workers -1"),
        pytest.param("speed_evp.py", "--device cuda", marks=NO_CUDA),
        ("speed_evp.py", "--device foo"),
        ("speed_evp.py", "--model nope"),
        ("speed_evp.py", "--precisions foo"),
        ("speed_evp.py", "--out {tmp}"),
        ("cpu_threads.py", "--repeats 0"),
        ("cpu_threads.py", "--eval-images 0 --eval-batch-sizes 8"),
        ("cpu_threads.py", "--threads 0"),
        ("cpu_threads.py", "--eval-batch-sizes 0"),
        ("cpu_threads.py", "--inner-size 31"),
        ("cpu_threads.py", "--pretrained {tmp}/nowhere"),
        ("cpu_threads.py", "--model nope"),
    ],
)
def test_bad_argument_is_one_line(tmp_path, script, args):
    (tmp_path / "afile").write_text("")
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "partial.json").write_text('{"diversity": "di"}')
    chosen = {"input_size": 48, "inner_size": 32, "vp_lr": 40, "sgd_lr": 0.5}
    (tmp_path / "typed.json").write_text(json.dumps({**chosen, "diversity": "di", "normgrad_lr": "10"}))
    (tmp_path / "unknown.json").write_text(json.dumps({**chosen, "diversity": "xx", "normgrad_lr": 10}))
    case = [a.format(tmp=tmp_path) for a in args.split()]
    argv = [a.format(tmp=tmp_path) for a in BASE[script]] + case  # (the case's flag, last, wins over BASE's)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    flag, value = case[:2]
    assert len(errors) == 1 and flag.lstrip("-") in errors[0] and value in errors[0], proc.stderr
    key = {"typed.json": "normgrad_lr '10' must be", "unknown.json": "diversity 'xx' must be one of ref, di"}
    assert key.get(Path(value).name, "") in errors[0]  # (a file's setting by its key, not as a flag)
    assert not (tmp_path / "out").exists()  # nothing written before the error
