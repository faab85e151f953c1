"""Tests for the CIFAR-10 ResNets and their checkpoint loading, against the real files in ../shared/data."""

from __future__ import annotations

import io
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vprompt import cifar_resnet
from vprompt.cifar_resnet import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN_STD,
    CIFAR_RESNET_CHECKPOINTS,
    CIFAR_RESNET_URL,
    CifarResNet,
    create_cifar_resnet,
    load_cifar_resnet_state_dict,
    resolve_cifar_resnet_checkpoint,
)


def _shared_data() -> Path:
    env = os.environ.get("VPROMPT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


SHARED = _shared_data()
RESNET_DIR = SHARED / "cifar10_resnets"
JPEG_TEST_DIR = SHARED / "cifar10_test_jpeg" / "test"

needs_resnets = pytest.mark.skipif(not RESNET_DIR.is_dir(), reason=f"{RESNET_DIR} not available")
needs_jpegs = pytest.mark.skipif(not JPEG_TEST_DIR.is_dir(), reason=f"{JPEG_TEST_DIR} not available")

# Exact trainable-parameter counts (the option-A shortcut has none): 0.27M, 0.46M, 0.66M, 0.85M.
PARAM_COUNTS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@needs_resnets
@pytest.mark.parametrize("depth", sorted(CIFAR_RESNET_CHECKPOINTS))
def test_checkpoint_keys_match_exactly(depth: int) -> None:
    file_name, _ = CIFAR_RESNET_CHECKPOINTS[depth]
    ckpt = load_cifar_resnet_state_dict(RESNET_DIR / file_name)
    model = CifarResNet(depth)
    model_sd = model.state_dict()
    # The files predate BatchNorm's num_batches_tracked buffer; every other key must match one to one.
    model_keys = {k for k in model_sd if not k.endswith("num_batches_tracked")}
    assert set(ckpt) == model_keys
    assert all(ckpt[k].shape == model_sd[k].shape for k in ckpt)

    loaded = create_cifar_resnet(depth, pretrained=RESNET_DIR / file_name)
    assert isinstance(loaded, CifarResNet)
    for k, v in ckpt.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert _n_params(loaded) == PARAM_COUNTS[depth]


@needs_resnets
def test_folder_and_alias_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_folder = create_cifar_resnet(20, pretrained=RESNET_DIR)
    # "cifar10" must use the cache without touching the network when the file is there.
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(RESNET_DIR / CIFAR_RESNET_CHECKPOINTS[20][0], cache)
    from_cache = create_cifar_resnet(20, pretrained="cifar10", cache_dir=cache, download=False)
    assert torch.equal(from_folder.linear.weight, from_cache.linear.weight)
    # The alias means the cache even beside a folder of that name (a data folder called cifar10, say) ...
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10").mkdir()
    aliased = create_cifar_resnet(20, pretrained="cifar10", cache_dir=cache, download=False)
    assert torch.equal(from_folder.linear.weight, aliased.linear.weight)
    with pytest.raises(FileNotFoundError, match="folder cifar10 has no resnet20"):  # ... which is ./cifar10
        create_cifar_resnet(20, pretrained="./cifar10", cache_dir=cache, download=False)


@needs_resnets
@needs_jpegs
@pytest.mark.slow
def test_resnet20_accuracy_on_jpeg_test_set() -> None:
    from PIL import Image

    classes = sorted(p.name for p in JPEG_TEST_DIR.iterdir() if p.is_dir())
    assert classes == list(CIFAR10_CLASSES)
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((JPEG_TEST_DIR / name).glob("*.jpg")):
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    assert len(images) == 10_000
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR10_MEAN_STD)
    x = (x - mean) / std
    y = torch.tensor(labels)

    # channels_last and small batches roughly halve the CPU time (cache-friendly activations).
    model = create_cifar_resnet(20, pretrained=RESNET_DIR).eval().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        with torch.inference_mode():
            pred = torch.cat([model(b).argmax(1) for b in x.split(250)])
    finally:
        torch.set_num_threads(threads)
    accuracy = (pred == y).float().mean().item()
    # The README reports ~81 % on these JPEGs (91.8 % on lossless CIFAR-10); wrong normalization gives ~28 %.
    assert accuracy >= 0.78, accuracy


@needs_resnets
def test_sha256_mismatch_rejected_before_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_name, expected = CIFAR_RESNET_CHECKPOINTS[20]
    bad = tmp_path / file_name
    data = bytearray((RESNET_DIR / file_name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))

    def _no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not run on an unverified file")

    monkeypatch.setattr(torch, "load", _no_load)
    for pretrained in (bad, tmp_path):
        with pytest.raises(ValueError, match="sha256") as info:
            create_cifar_resnet(20, pretrained=pretrained)
        msg = str(info.value)
        assert expected in msg and str(bad) in msg and "corrupt copy of the ResNet-20 checkpoint" in msg
        assert "delete" not in msg  # (the user's own file, maybe another one given by mistake)
    with pytest.raises(ValueError, match="the cached copy is corrupt: delete it and it is downloaded again"):
        resolve_cifar_resnet_checkpoint(20, "cifar10", cache_dir=tmp_path, download=False)
    good_32 = RESNET_DIR / CIFAR_RESNET_CHECKPOINTS[32][0]  # a good file of another depth is not called corrupt
    with pytest.raises(ValueError, match=r"is the ResNet-32 checkpoint, not the ResNet-20 one the model needs"):
        create_cifar_resnet(20, pretrained=good_32)


@needs_resnets
def test_folder_without_expected_file(tmp_path: Path) -> None:
    shutil.copy(RESNET_DIR / CIFAR_RESNET_CHECKPOINTS[32][0], tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FileNotFoundError) as info:
        create_cifar_resnet(20, pretrained=tmp_path)
    msg = str(info.value)
    assert "resnet20-12fca82f.th" in msg and "resnet32-d509ac18.th" in msg and "notes.txt" not in msg


def test_empty_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint-like files"):
        create_cifar_resnet(20, pretrained=tmp_path)
    missing = tmp_path / "nope.th"
    with pytest.raises(FileNotFoundError, match="nope.th"):
        create_cifar_resnet(20, pretrained=missing)
    # a mistyped weights name is told as the other model families tell it, with the names there are
    with pytest.raises(FileNotFoundError, match=r"--pretrained 'cifar' is neither a file or folder nor a weights "
                       r"name of cifar:resnet20 \(weights: cifar10, default, none\)"):  # fmt: skip
        create_cifar_resnet(20, pretrained="cifar")


def test_unknown_depth_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="20, 32, 44, 56"):
        create_cifar_resnet(18)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def test_constants() -> None:
    assert CIFAR10_MEAN_STD == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[-1] == "truck"
    for depth, (file_name, sha) in CIFAR_RESNET_CHECKPOINTS.items():
        assert file_name.startswith(f"resnet{depth}-") and file_name[len(f"resnet{depth}-") : -3] == sha[:8]
        assert len(sha) == 64
    assert CIFAR_RESNET_URL.format(file="x.th") == (
        "https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/d5489e8/pretrained_models/x.th"
    )


@pytest.mark.parametrize("depth", [20, 56])
def test_random_init_any_input_size(depth: int) -> None:
    torch.manual_seed(0)
    model = create_cifar_resnet(depth).eval()
    assert _n_params(model) == PARAM_COUNTS[depth]
    with torch.inference_mode():
        for size in (64, 33, 8):
            x = torch.randn(2, 3, size, size)
            feats = model.forward_features(x)
            assert feats.shape == (2, 64)
            logits = model(x)
            assert logits.shape == (2, 10)
            assert torch.allclose(logits, model.forward_head(feats))
            assert torch.isfinite(logits).all()


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPROMPT_CACHE", str(tmp_path))
    assert cifar_resnet.default_cache_dir() == tmp_path / "cifar10_resnets"
    monkeypatch.delenv("VPROMPT_CACHE")
    assert cifar_resnet.default_cache_dir() == Path.home() / ".cache" / "vprompt" / "cifar10_resnets"


def test_a_cache_that_is_a_file_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("nothing is fetched"))
    for cache in ("afile", "afile/sub"):
        monkeypatch.setenv("VPROMPT_CACHE", str(tmp_path / cache))
        with pytest.raises(FileExistsError, match=f"{tmp_path / 'afile'} is a file.*set \\$VPROMPT_CACHE to a folder"):
            cifar_resnet.resolve_cifar_resnet_checkpoint(20, "cifar10")


class _FakeResponse(io.BytesIO):
    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@needs_resnets
def test_download_verifies_then_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_name, _ = CIFAR_RESNET_CHECKPOINTS[20]
    good = (RESNET_DIR / file_name).read_bytes()
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> _FakeResponse:
        urls.append(url)
        return _FakeResponse(good)

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    model = create_cifar_resnet(20, pretrained="default", cache_dir=tmp_path / "c")
    assert urls == [CIFAR_RESNET_URL.format(file=file_name)]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [file_name]
    assert isinstance(model, CifarResNet)
    # A second call must reuse the cached file.
    create_cifar_resnet(20, pretrained="default", cache_dir=tmp_path / "c")
    assert len(urls) == 1


def test_corrupt_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _FakeResponse(b"<html>404</html>"))
    with pytest.raises(ValueError, match="sha256"):
        create_cifar_resnet(20, pretrained="cifar10", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float) -> _FakeResponse:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError, match="--pretrained PATH"):
        create_cifar_resnet(44, pretrained="cifar10", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="download=False"):
        create_cifar_resnet(44, pretrained="cifar10", cache_dir=tmp_path, download=False)
