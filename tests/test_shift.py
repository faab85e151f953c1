"""Distribution shift: CIFAR-C in its real on-disk layout, `vprompt eval --shift`, and the WILDS adapter."""

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
import types
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from vprompt import cli
from vprompt.checkpoint import current_umask
from vprompt.data import create_dataset, prepare_data
from vprompt.data import shift as shift_mod
from vprompt.data.datasets import synthetic_dataset
from vprompt.data.shift import (
    CORRUPTIONS,
    DatasetNotFoundError,
    MissingDependencyError,
    cifar_c_dataset,
    download_cifar_c,
    find_shift_sets,
    format_shift_report,
    safe_extract,
    summarize_shift,
)

from .conftest import tiny_run_args

N = 6  # images per severity in the fake release (the real one has 10,000)


def _fake_cifar_c(root, corruptions=("gaussian_noise", "fog"), images=None, labels=None, folder="CIFAR-10-C"):
    """A CIFAR-C release in the real layout: <corruption>.npy (5 x N, 32, 32, 3) uint8, severity 1 first, and
    labels.npy (5 x N,) int64. By default pixel (0, 0, 0) encodes the severity and [0, 0, 1] the image index."""
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    if labels is None:
        labels = np.arange(N) % 10
    n = len(labels)
    np.save(out / "labels.npy", np.tile(np.asarray(labels, dtype=np.int64), 5))
    for k, c in enumerate(corruptions):
        if images is None:
            arr = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
            for s in range(5):
                arr[s * n : (s + 1) * n, 0, 0, 0] = s + 1
                arr[s * n : (s + 1) * n, 0, 0, 1] = np.arange(n)
                arr[s * n : (s + 1) * n, 0, 0, 2] = k
        else:
            arr = np.concatenate([images(c, s) for s in range(1, 6)])
        np.save(out / f"{c}.npy", arr)
    return out


def test_cifar_c_severities_slice_the_release(tmp_path):
    _fake_cifar_c(tmp_path)
    for severity in (1, 3, 5):
        ds = cifar_c_dataset(tmp_path, "fog", severity)
        assert len(ds) == N and ds.images.shape == (N, 3, 32, 32)  # channels first, as every ArrayDataset
        assert (ds.images[:, 0, 0, 0] == severity).all() and ds.images[:, 1, 0, 0].tolist() == list(range(N))
        assert (ds.images[:, 2, 0, 0] == 1).all()  # the fog file, not the other one
        assert ds.targets.tolist() == [i % 10 for i in range(N)] and ds.classnames[0] == "airplane"
    with pytest.raises(ValueError, match="severity 6 must be one of 1..5"):
        cifar_c_dataset(tmp_path, "fog", 6)
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        cifar_c_dataset(tmp_path, "rain", 1)


def test_a_cut_short_or_pickled_file_is_named_and_never_unpickled(tmp_path):
    from vprompt.errors import DataFileError

    out = _fake_cifar_c(tmp_path, corruptions=("fog", "snow"))
    fog = (out / "fog.npy").read_bytes()
    (out / "fog.npy").write_bytes(fog[: len(fog) // 2])  # an interrupted extraction
    with pytest.raises(DataFileError, match=rf"{out / 'fog.npy'}: cut short or corrupt .*download and extract"):
        cifar_c_dataset(tmp_path, "fog", 1)
    np.save(out / "snow.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFileError, match=rf"{out / 'snow.npy'}: holds pickled objects, not an array"):
        cifar_c_dataset(tmp_path, "snow", 1)


@pytest.mark.parametrize("name", ["fog.npy", "labels.npy"])
def test_an_empty_file_is_named(tmp_path, name):
    from vprompt.errors import DataFileError

    out = _fake_cifar_c(tmp_path, corruptions=("fog",))
    (out / name).write_bytes(b"")  # (numpy: EOFError)
    with pytest.raises(DataFileError, match=rf"^{out / name}: cut short or corrupt .*; download and extract the arc"):
        cifar_c_dataset(tmp_path, "fog", 1)


def test_files_of_another_shape_or_type_are_refused_when_loaded(tmp_path):
    out = _fake_cifar_c(tmp_path, corruptions=("fog",))
    labels = np.load(out / "labels.npy")
    for bad in (labels[:, None], labels.astype(np.float32), labels[:-1]):
        np.save(out / "labels.npy", bad)
        with pytest.raises(ValueError, match=rf"^{out / 'labels.npy'}: expected 1-D integer labels in 0\.\.9, one per"):
            cifar_c_dataset(tmp_path, "fog", 1)
    np.save(out / "labels.npy", labels.astype(np.uint8))  # the release's own labels are uint8
    assert cifar_c_dataset(tmp_path, "fog", 2).targets.tolist() == [i % 10 for i in range(N)]
    images = np.load(out / "fog.npy")
    for bad in (images.astype(np.float32), images[..., 0], images[:-1]):
        np.save(out / "fog.npy", bad)
        with pytest.raises(
            ValueError, match=rf"^{out / 'fog.npy'}: expected uint8 images \({5 * N}, H, W, 3\), one per"
        ):
            cifar_c_dataset(tmp_path, "fog", 1)


def test_missing_files_name_the_folder_and_the_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        cifar_c_dataset(tmp_path, "fog", 1, classes=100)
    msg = str(e.value)
    assert str(tmp_path / "CIFAR-100-C") in msg and "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar" in msg
    _fake_cifar_c(tmp_path, corruptions=("fog",))
    with pytest.raises(DatasetNotFoundError, match="no snow.npy in") as e:
        cifar_c_dataset(tmp_path, "snow", 1, download=True)  # a folder that is there is not fetched again
    assert "complete it from https://zenodo.org" in str(e.value) and "delete it and pass --download" in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="zenodo.org/records/2535967/files/CIFAR-10-C.tar"):
        find_shift_sets("cifar10", tmp_path / "elsewhere")
    (tmp_path / "CIFAR-10-C" / "labels.npy").unlink()  # what is missing is named, not what is there
    with pytest.raises(DatasetNotFoundError, match=f"CIFAR-10-C: no labels.npy in {re.escape(str(tmp_path))}"):
        find_shift_sets("cifar10", tmp_path)


def test_shift_set_selection(tmp_path):
    _fake_cifar_c(tmp_path, corruptions=("gaussian_noise", "fog", "spatter"))
    assert len(CORRUPTIONS) == 15 and "spatter" not in CORRUPTIONS
    names = [s.name for s in find_shift_sets("cifar10", tmp_path)]
    assert names == [f"cifar10c/{c}/{s}" for c in ("gaussian_noise", "fog") for s in range(1, 6)]  # no extras
    assert [s.name for s in find_shift_sets("cifar10", tmp_path, ["cifar10c/*/5"])] == [
        "cifar10c/gaussian_noise/5", "cifar10c/fog/5", "cifar10c/spatter/5"]  # fmt: skip
    assert len(find_shift_sets("cifar10", tmp_path, ["cifar10c/spatter"])) == 5  # a name selects what lies under it
    assert [s.name for s in find_shift_sets("cifar10", tmp_path, ["cifar10c/fog"], severities=[2, 4])] == [
        "cifar10c/fog/2", "cifar10c/fog/4"]  # fmt: skip
    with pytest.raises(ValueError, match="cifar10c/fog/5 with --shift-severity 3 selects no shift set of cifar10"):
        find_shift_sets("cifar10", tmp_path, ["cifar10c/fog/5"], severities=[3])
    with pytest.raises(ValueError, match=r"'cifar10c/rain' matches no shift set of cifar10 \(they are: cifar10c/gaus"):
        find_shift_sets("cifar10", tmp_path, ["cifar10c/rain"])
    with pytest.raises(ValueError, match="no distribution-shift sets for dataset 'synthetic'"):
        find_shift_sets("synthetic", tmp_path)
    sets = find_shift_sets("cifar10", tmp_path, ["cifar10c"])
    results = {s.name: {"acc1": float(s.severity * 10 + (s.corruption == "fog"))} for s in sets}
    summary = summarize_shift(sets, results)["cifar10c"]
    assert summary["corruptions"] == 2  # spatter is reported but not averaged
    assert summary["severity"] == {str(s): s * 10 + 0.5 for s in range(1, 6)} and summary["mean"] == 30.5


def test_asking_only_for_corruptions_that_are_not_there_says_which_and_where_to_get_them(tmp_path):
    out = _fake_cifar_c(tmp_path, corruptions=("fog", "spatter"))
    url = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar"
    with pytest.raises(DatasetNotFoundError) as e:
        find_shift_sets("cifar10", tmp_path, ["cifar10c/fog", "cifar10c/snow"])
    assert str(e.value).startswith(f"--shift cifar10c/snow: CIFAR-10-C: no snow.npy in {out} (complete it from {url}")
    assert "it holds only fog.npy, spatter.npy" in str(e.value)
    # A pattern matching some sets that are there takes those.
    assert [s.name for s in find_shift_sets("cifar10", tmp_path, ["cifar10c/s*/1"])] == ["cifar10c/spatter/1"]

    # Only extra corruptions: the default selection (the standard ones) is an error, with or without a severity.
    (out / "fog.npy").unlink()
    for severities in (None, [3]):
        with pytest.raises(DatasetNotFoundError) as e:
            find_shift_sets("cifar10", tmp_path, severities=severities)
        msg = str(e.value)
        assert msg.startswith(f"--shift (the default sets): CIFAR-10-C: no gaussian_noise.npy in {out}") and url in msg
        assert "it holds only spatter.npy (ask for one by name: --shift cifar10c/spatter)" in msg
    assert [s.name for s in find_shift_sets("cifar10", tmp_path, ["cifar10c/spatter"], severities=[3])] == [
        "cifar10c/spatter/3"]  # fmt: skip


def test_eval_of_the_default_sets_in_a_folder_without_them_is_an_error(tmp_path, monkeypatch, capsys):
    assert cli.main(tiny_run_args(tmp_path, "--dataset-option", "n_train=32", "--dataset-option", "n_test=8",
                                  epochs=1)) == 0  # fmt: skip
    data_dir = tmp_path / "data"
    _fake_cifar_c(data_dir, ("speckle_noise",), labels=synthetic_dataset(n_train=32, n_test=8, split="test").targets)
    monkeypatch.setitem(shift_mod._SHIFTS, "synthetic", partial(shift_mod._cifar_c_sets, classes=10))
    args = ["eval", "--checkpoint", str(tmp_path / "run"), "--data-dir", str(data_dir), "--shift"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "no gaussian_noise.npy in" in err and "--shift cifar10c/speckle_noise" in err and "Traceback" not in err
    assert cli.main([*args, "cifar10c/speckle_noise", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(result["shift"]) == [f"cifar10c/speckle_noise/{s}" for s in range(1, 6)]


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_extracts_safely_and_atomically(tmp_path):
    labels = np.tile(np.arange(4), 5)
    _tar(tmp_path / "release.tar", {
        "CIFAR-10-C/labels.npy": _npy(labels),
        "CIFAR-10-C/fog.npy": _npy(np.full((20, 32, 32, 3), 7, dtype=np.uint8)),
    })  # fmt: skip
    root = tmp_path / "data"
    release = (tmp_path / "release.tar").as_uri()
    with pytest.raises(DatasetNotFoundError, match="not the published archive"):
        download_cifar_c(root, 10, url=release)  # checked against the real release's MD5: refused, nothing kept
    assert list(root.iterdir()) == []
    folder = download_cifar_c(root, 10, url=release, md5=_md5(tmp_path / "release.tar"))
    assert folder == root / "CIFAR-10-C" and sorted(p.name for p in folder.iterdir()) == ["fog.npy", "labels.npy"]
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-10-C"]  # no archive, staging or .part left behind
    # What a process killed while extracting left (a copy of the release) is removed by the next, once nothing has
    # been written to it for an hour (one extracting now is spared), and so is an archive its folder replaced.
    again, hour_ago = tmp_path / "again", time.time() - 3601
    for left in ("old", "current"):
        (again / f".CIFAR-10-C.{left}.extracting" / "CIFAR-10-C").mkdir(parents=True)
        (again / f".CIFAR-10-C.{left}.extracting" / "CIFAR-10-C" / "fog.npy").write_bytes(b"x")
    old = again / ".CIFAR-10-C.old.extracting"
    for path in (old, *old.rglob("*")):
        os.utime(path, (hour_ago, hour_ago))
    os.utime(again / ".CIFAR-10-C.current.extracting", (hour_ago, hour_ago))  # its file is being written
    download_cifar_c(again, 10, url=release, md5=_md5(tmp_path / "release.tar"))
    assert sorted(p.name for p in again.iterdir()) == [".CIFAR-10-C.current.extracting", "CIFAR-10-C"]
    (again / "CIFAR-10-C.tar").write_bytes(b"left")
    assert download_cifar_c(again, 10) == again / "CIFAR-10-C" and not (again / "CIFAR-10-C.tar").exists()
    assert len(cifar_c_dataset(root, "fog", 2)) == 4
    _tar(tmp_path / "flat.tar", {"labels.npy": _npy(labels), "fog.npy": _npy(np.zeros((20, 32, 32, 3), np.uint8))})
    flat = download_cifar_c(
        tmp_path / "flat", 10, url=(tmp_path / "flat.tar").as_uri(), md5=_md5(tmp_path / "flat.tar")
    )
    assert (
        flat.stat().st_mode & 0o777 == folder.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    )  # not mkdtemp's 0o700

    _tar(tmp_path / "evil.tar", {"CIFAR-10-C/labels.npy": _npy(labels), "../escaped.npy": b"x"})
    with pytest.raises(ValueError, match="refusing to extract '../escaped.npy'"):
        safe_extract(tmp_path / "evil.tar", tmp_path / "out")
    assert not (tmp_path / "escaped.npy").exists()
    with pytest.raises(ValueError, match="refusing"):
        download_cifar_c(tmp_path / "data2", 10, url=(tmp_path / "evil.tar").as_uri(), md5=_md5(tmp_path / "evil.tar"))
    assert not (tmp_path / "data2" / "CIFAR-10-C").exists()


def test_two_processes_extracting_at_once_each_get_the_whole_release(tmp_path, monkeypatch):
    _tar(tmp_path / "release.tar", {
        "CIFAR-10-C/labels.npy": _npy(np.tile(np.arange(4), 5)),
        "CIFAR-10-C/fog.npy": _npy(np.full((20, 32, 32, 3), 7, dtype=np.uint8)),
    })  # fmt: skip
    root, kw = tmp_path / "data", {"url": (tmp_path / "release.tar").as_uri(), "md5": _md5(tmp_path / "release.tar")}
    download_cifar_c(root, 10, **kw)  # leaves no archive; put one back, as if two downloads had finished
    (root / "CIFAR-10-C.tar").write_bytes((tmp_path / "release.tar").read_bytes())
    shutil.rmtree(root / "CIFAR-10-C")
    real, calls, other = shift_mod.safe_extract, [], []

    def extract_while_another_finishes(archive, dest):
        real(archive, dest)
        calls.append(dest)
        if len(calls) == 1:  # the other process starts, and finishes, while this one is between extracting and renaming
            other.append(download_cifar_c(root, 10, **kw))

    monkeypatch.setattr(shift_mod, "safe_extract", extract_while_another_finishes)
    assert download_cifar_c(root, 10, **kw) == other[0] == root / "CIFAR-10-C" and calls[0] != calls[1]
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-10-C"]
    assert sorted(p.name for p in (root / "CIFAR-10-C").iterdir()) == ["fog.npy", "labels.npy"]


def test_interrupted_download_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    class Broken(io.RawIOBase):
        def __init__(self):
            self.sent = 0

        def readinto(self, b):
            if self.sent:
                raise ConnectionResetError("connection reset (simulated)")
            self.sent = len(b)
            b[:] = b"\0" * len(b)
            return len(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Broken())
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="the download failed") as failed:
        download_cifar_c(root, 10)
    assert "--download" not in str(failed.value)  # it was given: the advice is where to put the files by hand
    assert list(root.iterdir()) == []


def test_eval_reports_each_shifted_set_next_to_the_test_accuracy(tmp_path, monkeypatch, capsys):
    assert cli.main(tiny_run_args(tmp_path, "-b", "16", "--dataset-option", "n_train=48", "--dataset-option",
                                  "n_test=24", epochs=1)) == 0  # fmt: skip
    test = synthetic_dataset(n_train=48, n_test=24, split="test")
    clean = test.images.permute(0, 2, 3, 1).numpy()  # back to the release's channels-last layout
    noisy = np.random.default_rng(0).integers(0, 256, size=clean.shape, dtype=np.uint8)
    data_dir = tmp_path / "data"
    _fake_cifar_c(data_dir, ("brightness", "gaussian_noise"), labels=test.targets.numpy(),
                  images=lambda c, s: clean if c == "brightness" else noisy)  # fmt: skip
    # Pretend the synthetic task has CIFAR-10-C as its shifted version.
    monkeypatch.setitem(shift_mod._SHIFTS, "synthetic", partial(shift_mod._cifar_c_sets, classes=10))

    args = ["eval", "--checkpoint", str(tmp_path / "run"), "--data-dir", str(data_dir)]
    assert cli.main([*args, "--shift", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["acc1"] == pytest.approx(results["test"]["acc1"]) and result["n"] == 24
    shift = result["shift"]
    assert sorted(shift) == sorted(f"cifar10c/{c}/{s}" for c in ("brightness", "gaussian_noise") for s in range(1, 6))
    for s in range(1, 6):  # the unshifted images through the shift path give the test accuracy
        assert shift[f"cifar10c/brightness/{s}"]["acc1"] == pytest.approx(result["acc1"])
        assert shift[f"cifar10c/gaussian_noise/{s}"]["n"] == 24
    summary = result["shift_summary"]["cifar10c"]
    noise = [shift[f"cifar10c/gaussian_noise/{s}"]["acc1"] for s in range(1, 6)]
    assert summary["severity"]["3"] == pytest.approx((result["acc1"] + noise[2]) / 2)
    assert summary["mean"] == pytest.approx((5 * result["acc1"] + sum(noise)) / 10) and summary["corruptions"] == 2

    assert cli.main([*args, "--shift", "cifar10c/gaussian_noise", "--shift-severity", "1", "5"]) == 0
    text = capsys.readouterr().out
    assert f"synthetic test (in distribution): acc {result['acc1']:.2f} (24 images)" in text
    assert "sev 1   sev 5" in text and "gaussian_noise" in text and "mean (1 corruption) " in text
    assert "brightness" not in text
    # one corruption at every severity, the other at one: the mean is over the 6 sets, and its row says so
    assert cli.main([*args, "--shift", "cifar10c/*/5", "cifar10c/gaussian_noise", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shift_summary"]["cifar10c"]
    assert summary["sets"] == 6 and summary["mean"] == pytest.approx((result["acc1"] + sum(noise)) / 6)
    assert cli.main([*args, "--shift", "cifar10c/*/5", "cifar10c/gaussian_noise"]) == 0
    assert "mean (2 corruptions, 6 sets)" in capsys.readouterr().out

    assert cli.main([*args, "--data-dir", str(tmp_path / "none"), "--shift"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10-C" in err and "zenodo.org" in err and "Traceback" not in err

    # A shift set that is the test split itself (WILDS' ood_test) takes the test evaluation, not a second pass.
    def build_again():
        raise AssertionError("the test split was evaluated twice")

    same = shift_mod.ShiftSet("synthetic/ood_test", build_again, "synthetic", split="test")
    monkeypatch.setitem(shift_mod._SHIFTS, "synthetic", lambda root, **options: [same])
    assert cli.main([*args, "--shift", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["shift"]["synthetic/ood_test"]["acc1"] == again["acc1"] == result["acc1"]


# ---------------------------------------------------------------------------------------------------------------
# WILDS


def test_wilds_datasets_need_the_optional_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wilds", None)  # `import wilds` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'vprompt\[wilds\]'"):
        create_dataset("camelyon17", tmp_path, "train")
    assert cli.main(tiny_run_args(tmp_path, "--dataset", "iwildcam", epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vprompt train: error:") and "pip install 'vprompt[wilds]'" in err


class _FakeSubset:
    """A WILDSSubset: ``y_array`` and ``(PIL image, label, metadata)`` items."""

    def __init__(self, y, images):
        self.y_array, self.images = y, images

    def __getitem__(self, i):
        return self.images[i], self.y_array[i], None


class _FakeWildsDataset:
    """The part of the WILDSDataset API the adapter uses: get_subset, n_classes, data_dir (stub: the `wilds`
    package is an optional extra that the test environment does not install)."""

    def __init__(self, name, root_dir, n_classes):
        self.n_classes, self.data_dir = n_classes, f"{root_dir}/{name}_v1.0"
        self.split_dict = {"train": 0, "id_val": 1, "id_test": 2, "val": 3, "test": 4}
        self.calls = []

    def get_subset(self, split):
        self.calls.append(split)
        code = self.split_dict[split]
        images = [Image.new("RGB" if i % 2 else "L", (40, 30), color=code * 40) for i in range(5)]
        return _FakeSubset(torch.arange(5) % self.n_classes, images)


@pytest.fixture
def fake_wilds(monkeypatch):
    made = {}

    def get_dataset(dataset, root_dir, download):
        made[dataset] = _FakeWildsDataset(dataset, root_dir, {"camelyon17": 2, "iwildcam": 182, "fmow": 62}[dataset])
        return made[dataset]

    module = types.ModuleType("wilds")
    module.get_dataset = get_dataset
    monkeypatch.setitem(sys.modules, "wilds", module)
    monkeypatch.setattr(shift_mod, "_WILDS_CACHE", {})
    return made


def test_wilds_adapter_maps_splits_and_class_names(tmp_path, fake_wilds):
    data = prepare_data("camelyon17", tmp_path, image_size=32)
    ds = fake_wilds["camelyon17"]
    assert ds.calls == ["train", "test", "id_val"]  # one WILDS dataset object for all splits
    assert data.val_source == "official" and data.classnames[1] == "lymph node containing metastatic tumor tissue"
    image, label = data.test[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 1
    assert image[0, 0, 0] == 4 * 40  # from WILDS' OOD test split
    val = create_dataset("camelyon17", tmp_path, "val", val_split="ood_val")
    assert ds.calls[-1] == "val"
    assert val.targets == [0, 1, 0, 1, 0]
    told = r"has no split 'id_test' \(it has: train, val, test, id_val, ood_val, ood_test\)"
    with pytest.raises(ValueError, match=told):
        create_dataset("camelyon17", tmp_path, "id_test")
    with pytest.raises(ValueError, match=told):  # (the builder called itself, without the registry's check)
        shift_mod.wilds_dataset(tmp_path, "id_test", name="camelyon17")
    sets = find_shift_sets("camelyon17", tmp_path)
    assert [s.name for s in sets] == ["camelyon17/ood_val", "camelyon17/ood_test"]
    assert [s.split for s in sets] == [None, "test"]  # the test split itself (evaluated once by eval --shift)
    assert [s.name for s in find_shift_sets("fmow", tmp_path)] == ["fmow/id_test", "fmow/ood_val", "fmow/ood_test"]
    fmow = create_dataset("fmow", tmp_path, "train")
    assert len(fmow.classnames) == 62 and fmow.classnames[:2] == ["airport", "airport_hangar"]


def test_wilds_summary_keeps_the_in_distribution_split_out_of_the_shifted_mean(tmp_path, fake_wilds):
    sets = find_shift_sets("fmow", tmp_path)
    assert [s.in_distribution for s in sets] == [True, False, False]
    results = {"fmow/id_test": {"acc1": 60.0, "n": 5}, "fmow/ood_val": {"acc1": 50.0, "n": 5}}
    results["fmow/ood_test"] = {"acc1": 40.0, "n": 5}
    summary = summarize_shift(sets, results)["fmow"]
    assert summary == {"mean": 45.0, "sets": 2, "id_mean": 60.0, "gap": 15.0}
    report = {"dataset": "fmow", "split": "test", "acc1": 40.0, "n": 5, "shift": results}
    text = format_shift_report({**report, "shift_summary": {"fmow": summary}})
    assert "fmow: shifted mean 45.00 (2 sets), in distribution 60.00, gap 15.00" in text


def test_iwildcam_class_names_from_the_release(tmp_path, fake_wilds, caplog):
    folder = tmp_path / "iwildcam_v1.0"
    folder.mkdir()
    rows = "\n".join(f"{y},{y * 3},species {y}" for y in range(182))
    # The release lists categories outside the 182 classes with y 99999, some under a class's category id too.
    outside = "\n".join(f"99999,{y * 3},other {y}" for y in (0, 1, 181))
    (folder / "categories.csv").write_text("y,category_id,name\n" + rows + "\n" + outside + "\n")
    names = create_dataset("iwildcam", tmp_path, "train").classnames
    assert (len(names), names[:2], names[181]) == (182, ["species 0", "species 1"], "species 181")
    # Without a y column, through metadata.csv (y, category_id).
    rows = "\n".join(f"{y * 3},species {y}" for y in range(182))
    (folder / "categories.csv").write_text("category_id,name\n" + rows + "\n")
    meta = "\n".join(f"img{i}.jpg,{y},{y * 3}" for i, y in enumerate([*range(182), 7, 7]))
    (folder / "metadata.csv").write_text("filename,y,category_id\n" + meta + "\n")
    assert create_dataset("iwildcam", tmp_path, "train").classnames[181] == "species 181"
    (folder / "categories.csv").unlink()
    assert create_dataset("iwildcam", tmp_path, "train").classnames[5] == "class 5"
    assert "no class names" in caplog.text


def test_eval_shift_of_a_dataset_without_shift_sets_is_refused_before_anything_is_read(tmp_path, monkeypatch, capsys):
    from vprompt import engine

    assert cli.main(tiny_run_args(tmp_path, epochs=1)) == 0
    monkeypatch.setattr(engine, "_build_for_run", lambda *a, **k: pytest.fail("the model and data were read first"))
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--shift"]) == 2
    assert "--shift: no distribution-shift sets for dataset 'synthetic'" in capsys.readouterr().err


def test_eval_of_the_val_split_of_a_run_selected_on_wilds_ood_val_is_not_called_in_distribution(
    tmp_path, fake_wilds, capsys
):
    data = str(tmp_path / "data")
    args = tiny_run_args(tmp_path, "--dataset", "camelyon17", "--data-dir", data, "--dataset-option",
                         "val_split=ood_val", epochs=1)  # fmt: skip
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--split", "val", "--shift"]) == 0
    text = capsys.readouterr().out
    assert "camelyon17 val (WILDS OOD val): acc" in text and "(in distribution)" not in text
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--split", "train", "--shift", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split_kind"] == "in distribution"
