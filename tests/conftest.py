"""Shared fixtures: the tiny packaged CLIP model, small synthetic runs, and the real data beside the project."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from vprompt.engine import fix_cublas_workspace

ROOT = Path(__file__).resolve().parents[1]
# PyTorch reads cuBLAS's workspace setting once per process, at the first GPU matrix product: set before any test
# uses a GPU, it lets a --deterministic run (test_cli's GPU test) follow the other tests' GPU runs in one process.
fix_cublas_workspace()
TINY_MODEL = "vprompt-tiny-clip"


#: Variables of a user's environment that change what vprompt, or the Hugging Face Hub it calls, does: the tests
#: assume none is set, whatever the shell that runs them sets.
USER_ENVIRONMENT = (
    "HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
    "VPROMPT_DEBUG", "VPROMPT_DATA", "VPROMPT_CACHE",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _plain_environment():
    with pytest.MonkeyPatch.context() as patch:  # (its own: a test's monkeypatch.undo() leaves this in place)
        for name in USER_ENVIRONMENT:
            patch.delenv(name, raising=False)
        hub = sys.modules.get("huggingface_hub.constants")  # (it reads the first two as it is imported)
        if hub is not None:
            patch.setattr(hub, "HF_HUB_OFFLINE", False)
            patch.setattr(hub, "ENDPOINT", "https://huggingface.co")
        yield


def shared_data() -> Path:
    """``../shared/data`` beside the project (or $VPROMPT_SHARED_DATA)."""
    return Path(os.environ.get("VPROMPT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def vprompt_caplog(caplog, monkeypatch):
    """``caplog`` that also sees the ``vprompt`` logger, which stops propagating once a run has set up its logging."""
    logger = logging.getLogger("vprompt")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    return caplog


@pytest.fixture(scope="session")
def tiny_backbone():
    from vprompt.backbones import create_backbone

    return create_backbone(TINY_MODEL)


def tiny_run_args(tmp_path: Path, *extra: str, name: str = "run", epochs: int = 2) -> list[str]:
    """Arguments of a fast ``vprompt train`` on the tiny model and a small synthetic dataset."""
    data = [] if "--dataset" in extra else [
        "--dataset", "synthetic", "--dataset-option", "n_train=96", "--dataset-option", "n_test=48",
    ]  # fmt: skip
    return [
        "train", "--model", TINY_MODEL, *data, "--epochs", str(epochs), "-b", "32", "--output", str(tmp_path),
        "--name", name, "--log-every", "0", *extra,
    ]  # fmt: skip
