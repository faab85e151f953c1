"""MNIST from IDX files (fixtures in the real on-disk format, and the real files beside the project) and
scikit-learn's digits."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import urllib.error

import numpy as np
import pytest
import torch

from vprompt.data import create_dataset, prepare_data
from vprompt.data import digits as digits_module
from vprompt.data.idx import write_idx
from vprompt.data.registry import DatasetNotFoundError

from .conftest import shared_data

MNIST = shared_data() / "mnist"
# Per-class counts listed in ../shared/data/README.md.
COUNTS = {
    "train": [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def _write_mnist(folder, prefix, n, gz, seed=0, size=28):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, gz):
    images, labels = _write_mnist(tmp_path, "train", 30, gz)
    test_images, _ = _write_mnist(tmp_path, "t10k", 20, gz, seed=1)
    ds = create_dataset("mnist", tmp_path, "train")
    assert ds.images.shape == (30, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.targets.tolist() == labels.tolist() and ds.classnames == [str(d) for d in range(10)]
    test = create_dataset("mnist", tmp_path, "test")
    assert torch.equal(test.images[:, 0], torch.from_numpy(test_images))


def test_mnist_reads_a_pair_of_one_form_where_a_file_of_the_other_lies_beside_it(tmp_path):
    images, labels = _write_mnist(tmp_path, "train", 30, gz=True)
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:20])  # an older, unzipped copy of the images alone
    ds = create_dataset("mnist", tmp_path, "train")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images)) and ds.targets.tolist() == labels.tolist()
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:20])  # both unzipped: that pair is read
    assert len(create_dataset("mnist", tmp_path, "train")) == 20


def test_mnist_crop_keeps_the_central_box(tmp_path):
    images, _ = _write_mnist(tmp_path, "train", 12, gz=False)
    cropped = create_dataset("mnist", tmp_path, "train", crop="20")  # as --dataset-option crop=20 gives it
    assert torch.equal(cropped.images[:, 0], torch.from_numpy(images[:, 4:24, 4:24]))
    with pytest.raises(ValueError, match=re.escape("crop=29 must be a whole number from 1 to 28")):
        create_dataset("mnist", tmp_path, "train", crop=29)
    for bad in (0, "abc", 20.5, True):
        with pytest.raises(ValueError, match=re.escape(f"crop={bad!r} must be a whole number >= 1")):
            create_dataset("mnist", tmp_path, "train", crop=bad)
    # IDX digits of another size: the bound and the centre are theirs
    small, _ = _write_mnist(tmp_path / "small", "train", 4, gz=False, size=16)
    cropped = create_dataset("mnist", tmp_path / "small", "train", crop=8)
    assert torch.equal(cropped.images[:, 0], torch.from_numpy(small[:, 4:12, 4:12]))
    with pytest.raises(ValueError, match=re.escape("crop=20 must be a whole number from 1 to 16")):
        create_dataset("mnist", tmp_path / "small", "train", crop=20)


def test_test_digits_of_another_size_than_the_training_digits_are_warned_about(tmp_path, vprompt_caplog):
    _write_mnist(tmp_path, "train", 30, gz=False)
    _write_mnist(tmp_path, "t10k", 20, gz=False, size=32)  # another dataset's files: resized alone, not to one scale
    prepare_data("mnist", tmp_path, image_size=32, download=False)
    assert "training images are 28x28 pixels and the test images 32x32" in vprompt_caplog.text
    vprompt_caplog.clear()
    _write_mnist(tmp_path, "t10k", 20, gz=False)
    prepare_data("mnist", tmp_path, image_size=32, download=False)
    assert "pixels" not in vprompt_caplog.text


def test_official_train_set_is_preferred_over_train10k_and_subfolders_are_searched(tmp_path):
    _write_mnist(tmp_path / "mnist", "train10k", 10, gz=True, seed=2)
    assert len(create_dataset("mnist", tmp_path, "train")) == 10  # found in DIR/mnist
    _write_mnist(tmp_path / "mnist", "train", 40, gz=False, seed=3)
    assert len(create_dataset("mnist", tmp_path, "train")) == 40
    _write_mnist(tmp_path / "MNIST" / "raw", "t10k", 7, gz=True)
    assert len(create_dataset("mnist", tmp_path, "test")) == 7  # torchvision's layout
    _write_mnist(tmp_path, "train10k", 12, gz=False, seed=4)  # a subset in DIR, the official set in a subfolder
    assert len(create_dataset("mnist", tmp_path, "train")) == 40


def test_mnist_errors_name_the_files_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        create_dataset("mnist", tmp_path, "train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and "train10k" in msg and "--data-dir" in msg
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DatasetNotFoundError, match="but not t10k-labels-idx1-ubyte"):
        create_dataset("mnist", tmp_path, "test")
    _write_mnist(tmp_path / "mnist", "t10k", 6, gz=True)  # a half pair does not hide a whole one in a subfolder
    assert len(create_dataset("mnist", tmp_path, "test")) == 6
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="has 3 images but .* has 4 labels"):
        create_dataset("mnist", tmp_path, "test")


def test_a_half_pair_is_told_when_a_download_fails_and_when_another_pair_is_read(tmp_path, monkeypatch, vprompt_caplog):
    def offline(url, timeout):
        raise urllib.error.URLError("offline (simulated)")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(
        DatasetNotFoundError, match="could not download .*found .*t10k-images-idx3-ubyte but not t10k-labels"
    ):
        create_dataset("mnist", tmp_path, "test", download=True)  # the file that is missing, not only the download
    _write_mnist(tmp_path, "train10k", 10, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))  # the full set, half there
    assert len(create_dataset("mnist", tmp_path, "train")) == 10
    assert "found" in vprompt_caplog.text and "train-images-idx3-ubyte.gz but not train-labels" in vprompt_caplog.text


def test_an_empty_test_split_is_no_accuracy(tmp_path):
    _write_mnist(tmp_path, "train", 20, gz=False)
    _write_mnist(tmp_path, "t10k", 0, gz=False)
    with pytest.raises(DatasetNotFoundError, match=f"dataset mnist in {tmp_path}: its test split has no images"):
        prepare_data("mnist", tmp_path, image_size=32, download=False)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _served_mnist_test(tmp_path, monkeypatch) -> dict[str, bytes]:
    """Five test digits as the mirrors serve them (file name -> bytes), their MD5s made the published ones."""
    import hashlib

    served = {}
    for kind, arr in (("images", np.full((5, 28, 28), 7, np.uint8)), ("labels", np.arange(5, dtype=np.uint8))):
        buf = tmp_path / f"src-{kind}.gz"
        write_idx(buf, arr)
        name = f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        served[name] = buf.read_bytes()
    monkeypatch.setattr(digits_module, "MNIST_MD5", {k: hashlib.md5(v).hexdigest() for k, v in served.items()})
    return served


def test_mnist_download_moves_on_to_the_next_mirror_after_a_response_cut_short(tmp_path, monkeypatch):
    import http.client

    served = _served_mnist_test(tmp_path, monkeypatch)

    class CutShort(_Response):
        def read(self, *args):
            raise http.client.IncompleteRead(b"", 100)  # a chunked response closed early: no OSError

    def urlopen(url, timeout):
        first = url.startswith(digits_module.MNIST_MIRRORS[0])
        return CutShort() if first else _Response(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    root = tmp_path / "data"
    assert len(create_dataset("mnist", root, "test", download=True)) == 5
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(served)  # and no partial file


def test_a_download_removes_what_a_killed_one_left_and_spares_one_in_progress(tmp_path, monkeypatch):
    import os
    import time

    from vprompt.download import download_verified

    old, current = tmp_path / ".f.bin.abc.part", tmp_path / ".f.bin.def.part"
    for part in (old, current):
        part.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _Response(b"data"))
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    download_verified("https://example.org/f.bin", tmp_path / "f.bin", hashlib.sha256(b"data").hexdigest())
    assert sorted(p.name for p in tmp_path.iterdir()) == [current.name, "f.bin"]
    # Whole on the disk before it has its name, and readable by others as any file made here (not mkstemp's 0600).
    assert calls == ["fsync", "replace", "fsync"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_mnist_download_verifies_md5_and_is_reused(tmp_path, monkeypatch):
    served = _served_mnist_test(tmp_path, monkeypatch)
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        return _Response(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    root = tmp_path / "data"
    ds = create_dataset("mnist", root, "test", download=True)
    assert len(ds) == 5 and sorted(p.name for p in (root / "mnist").iterdir()) == sorted(served)
    assert all(u.startswith(digits_module.MNIST_MIRRORS[0]) for u in urls) and len(urls) == 2
    create_dataset("mnist", root, "test", download=True)
    assert len(urls) == 2  # the files are there now
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()  # as a download interrupted after the images leaves it
    assert len(create_dataset("mnist", root, "test", download=True)) == 5
    assert urls[2:] == [digits_module.MNIST_MIRRORS[0] + "t10k-labels-idx1-ubyte.gz"]  # only the missing file

    # A corrupt download is rejected on every mirror and leaves nothing behind: no file, and not the folders it made
    # (which a later run would take for the data's), while a folder the user made stays.
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _Response(b"<html>"))
    other = tmp_path / "other"
    with pytest.raises(DatasetNotFoundError, match="MD5"):
        create_dataset("mnist", other / "data", "test", download=True)
    assert not other.exists()
    other.mkdir()
    with pytest.raises(DatasetNotFoundError, match="MD5"):
        create_dataset("mnist", other, "test", download=True)
    assert list(other.iterdir()) == []


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"{MNIST} not available")
def test_real_mnist_files_beside_the_project():
    for split in ("train", "test"):
        ds = create_dataset("mnist", MNIST, split)
        assert ds.images.shape == (10_000, 1, 28, 28)
        assert torch.bincount(ds.targets, minlength=10).tolist() == COUNTS[split]
        # Real digits: dark background, bright strokes.
        assert ds.images.float().mean() < 60 and ds.images.max() == 255


def test_digits_fixed_stratified_split():
    pytest.importorskip("sklearn")
    train, test = create_dataset("digits", None, "train"), create_dataset("digits", None, "test")
    assert (len(train), len(test)) == (1297, 500)
    assert train.images.shape[1:] == (1, 8, 8) and int(train.images.max()) == 255
    counts = torch.bincount(test.targets, minlength=10)
    assert counts.min() >= 48 and counts.max() <= 51  # stratified: ~50 per class
    # Deterministic, and a partition: test indices are distinct and train is their complement.
    again = create_dataset("digits", None, "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.targets, test.targets)
    from sklearn.datasets import load_digits

    labels = load_digits().target
    idx = digits_module._stratified_test_indices(labels, 500, 0)
    assert len(set(idx.tolist())) == 500 and len(train) + len(test) == len(labels)
    smaller = create_dataset("digits", None, "test", test_size=100, test_seed=1)
    assert len(smaller) == 100 and torch.bincount(smaller.targets).tolist() == [10] * 10
    for key, bad in (("test_size", "abc"), ("test_size", 100.9), ("test_size", True), ("test_size", 1797)):
        with pytest.raises(ValueError, match=re.escape(f"{key}={bad!r} must be a whole number from 1 to 1796")):
            create_dataset("digits", None, "test", **{key: bad})
    with pytest.raises(ValueError, match="test_seed='x' must be a whole number >= 0"):
        create_dataset("digits", None, "test", test_seed="x")


def test_digits_through_prepare_data_hold_out_validation():
    pytest.importorskip("sklearn")
    data = prepare_data("digits", None, image_size=24, val_fraction=0.1, split_seed=0)
    assert len(data.train) + len(data.val) == 1297 and len(data.test) == 500 and data.val_source == "holdout"
    assert data.templates and "number" in data.templates[0]


def test_digits_without_scikit_learn_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(DatasetNotFoundError, match=r"pip install 'vprompt\[digits\]'"):
        create_dataset("digits", None, "train")


def test_gzip_detection_does_not_trust_names(tmp_path):
    # An uncompressed file under the .gz name (some mirrors do this) still reads.
    _write_mnist(tmp_path, "t10k", 4, gz=False)
    for kind in ("images-idx3", "labels-idx1"):
        src = tmp_path / f"t10k-{kind}-ubyte"
        src.rename(tmp_path / f"t10k-{kind}-ubyte.gz")
    assert len(create_dataset("mnist", tmp_path, "test")) == 4
