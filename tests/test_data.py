import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vprompt.data import (
    ArrayDataset,
    DatasetNotFoundError,
    build_transform,
    create_dataset,
    epoch_order,
    holdout_split,
    make_loader,
    prepare_data,
)
from vprompt.errors import DataFileError


def test_holdout_split_is_stratified_seeded_and_disjoint():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, val = holdout_split(labels, 0.1, seed=3)
    assert sorted(train + val) == list(range(100))
    assert not set(train) & set(val)
    counts = np.bincount([labels[i] for i in val])
    assert counts.tolist() == [5, 3, 2]
    assert holdout_split(labels, 0.1, seed=3) == (train, val)
    assert holdout_split(labels, 0.1, seed=4)[1] != val
    with pytest.raises(ValueError, match="--val-fraction"):
        holdout_split(labels, 1.0, seed=0)
    # a large fraction leaves every class a training image (round(0.8 * 2) would take both of class 0)
    small = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    train, val = holdout_split(small, 0.8, seed=0)
    assert np.bincount([small[i] for i in train]).tolist() == [1, 2, 1]
    assert np.bincount([small[i] for i in val]).tolist() == [1, 6]


def test_epoch_order_is_reproducible_and_shards_cover_everything():
    a = epoch_order(10, True, seed=1, epoch=2)
    assert torch.equal(a, epoch_order(10, True, seed=1, epoch=2))
    assert not torch.equal(a, epoch_order(10, True, seed=1, epoch=3))
    shards = [epoch_order(10, True, 1, 2, rank=r, world_size=3) for r in range(3)]
    assert set(torch.cat(shards).tolist()) == set(range(10))  # padded to 4 each: see the next test


def test_training_shards_are_padded_to_the_same_length_and_evaluation_shards_are_not():
    # 33 images on 2 processes with batch 16: unpadded, one process would take a third step the other never takes,
    # and wait in the gradient all-reduce for ever.
    train = [epoch_order(33, True, 1, 0, rank=r, world_size=2) for r in range(2)]
    assert [len(t) for t in train] == [17, 17] and set(torch.cat(train).tolist()) == set(range(33))
    assert torch.equal(epoch_order(33, True, 1, 0), epoch_order(33, True, 1, 0, world_size=1))  # one process: as is
    evaluation = [epoch_order(33, False, 1, 0, rank=r, world_size=2) for r in range(2)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(33))
    ds = ArrayDataset(np.zeros((33, 4, 4, 3), np.uint8), [i % 3 for i in range(33)], ["a", "b", "c"])
    assert {len(make_loader(ds, 16, True, rank=r, world_size=2)) for r in range(2)} == {2}


def test_an_in_order_pass_shares_the_training_loaders_images_without_padding():
    ds = ArrayDataset(np.zeros((10, 4, 4, 3), np.uint8), list(range(10)), [str(i) for i in range(10)])
    shards = [make_loader(ds, 4, True, rank=r, world_size=3) for r in range(3)]
    ordered = [s.in_order() for s in shards]
    assert all(o.images is s.images for o, s in zip(ordered, shards))  # no second copy of the data
    seen = [int(y) for o in ordered for _, labels in o for y in labels]
    assert sorted(seen) == list(range(10)) and torch.cat([y for _, y in ordered[0]]).tolist() == [0, 3, 6, 9]


def _noise_files(tmp_path, n: int) -> list:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return [(tmp_path / f"{i}.png", i % 2) for i in range(n)]


def test_a_file_loader_starts_no_more_decoding_processes_than_there_are_cores(tmp_path, monkeypatch):
    from vprompt import distributed
    from vprompt.data.base import FileDataset

    ds = FileDataset(_noise_files(tmp_path, 4), ["a", "b"], build_transform(24))
    monkeypatch.setattr(distributed, "usable_cpus", lambda: 2)
    assert make_loader(ds, 2, False, workers=4).loader.num_workers == 2  # (PyTorch warns of more, at each loader)
    assert make_loader(ds, 2, False, workers=1).loader.num_workers == 1


def test_random_crops_of_a_file_dataset_resume_exactly_with_any_workers(tmp_path, monkeypatch):
    from vprompt.data.base import FileDataset

    ds = FileDataset(_noise_files(tmp_path, 8), ["a", "b"], build_transform(24, random_crop=True))

    def images_of_epochs(start: int, stop: int, workers: int) -> list[torch.Tensor]:
        loader, out = make_loader(ds, 8, True, seed=42, workers=workers), []
        for epoch in range(start, stop):
            torch.default_generator.manual_seed(epoch)  # the crops do not follow the global RNG, left as it was
            loader.set_epoch(epoch)
            out.append(torch.cat([x for x, _ in loader]))
            assert torch.equal(torch.get_rng_state(), torch.default_generator.manual_seed(epoch).get_state())
        return out

    def no_gpu_reseed(seed: int) -> None:
        raise AssertionError("decoding in this process reseeded the GPUs, whose RNG input diversity draws from")

    straight = images_of_epochs(0, 3, workers=2)  # persistent workers, their state carried from epoch to epoch
    assert not torch.equal(straight[1], straight[2])  # each epoch its own order and crops
    assert torch.equal(straight[2], images_of_epochs(2, 3, workers=1)[0])
    monkeypatch.setattr(torch.cuda, "manual_seed_all", no_gpu_reseed)  # (workers seed it as they start)
    assert torch.equal(straight[1], images_of_epochs(1, 2, workers=0)[0])


@pytest.mark.parametrize("workers", [0, 1])
def test_processes_decode_their_shares_of_a_batch_as_one_process_does(tmp_path, workers):
    from vprompt.data.base import FileDataset

    files = _noise_files(tmp_path, 1) * 7 + _noise_files(tmp_path, 8)[1:]  # one image 7 times, then 7 others
    ds = FileDataset(files, ["a", "b"], build_transform(24, random_crop=True))

    def epoch(rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
        loader = make_loader(ds, 8 // world_size, True, seed=42, workers=workers, rank=rank, world_size=world_size)
        loader.set_epoch(1)
        return [x for x, _ in loader]

    one, shares = epoch(), [epoch(rank, 2) for rank in (0, 1)]
    assert len(one) == len(shares[0]) == 2
    for batch, first, second in zip(one, *shares, strict=True):  # process r holds the global batch's r, r + 2, ...
        assert torch.equal(batch[0::2], first) and torch.equal(batch[1::2], second)
    copies = torch.cat(one)[[i for i, (path, _) in enumerate(files) if path == files[0][0]]]
    assert len({c.numpy().tobytes() for c in copies}) > 1  # the same image cropped anew where it recurs


def test_device_batches_serve_in_memory_data():
    ds = ArrayDataset(np.zeros((10, 4, 4, 3), np.uint8), list(range(10)), [str(i) for i in range(10)])
    loader = make_loader(ds, 4, shuffle=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 4, 4) and batches[0][0].dtype == torch.uint8


def test_synthetic_is_deterministic():
    a = create_dataset("synthetic", split="train", n_train=20)
    b = create_dataset("synthetic", split="train", n_train=20)
    assert torch.equal(a.images, b.images) and len(a) == 20 and a.classnames[0] == "class 0"
    assert not torch.equal(a.images[:10], create_dataset("synthetic", split="test", n_test=10).images)


def _write_folder(root, split, classes, n=3, size=(20, 12)):
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((*size, 3), 20 * i % 256, np.uint8)).save(d / f"{i}.png")


def test_image_folder_reads_class_names_and_resizes(tmp_path):
    _write_folder(tmp_path, "train", ["zebra", "apple"], n=10)
    _write_folder(tmp_path, "test", ["zebra", "apple"])
    data = prepare_data("imagefolder", tmp_path, image_size=16, val_fraction=0.2, split_seed=0, download=False)
    assert data.classnames == ["apple", "zebra"]
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 6)
    img, label = data.test[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == 0
    assert data.split_indices["val"] and not set(data.split_indices["val"]) & set(data.split_indices["train"])


def test_image_folder_official_val_is_used(tmp_path):
    for split in ("train", "val", "test"):
        _write_folder(tmp_path, split, ["a", "b"])
    data = prepare_data("imagefolder", tmp_path, image_size=8, download=False)
    assert data.val_source == "official" and len(data.val) == 6 and len(data.train) == 6
    for f in (tmp_path / "val").rglob("*.png"):  # a val/ with its class folders but no images: no split
        f.unlink()
    (tmp_path / "val" / "zebra").mkdir()  # (nor are its class folders classes)
    data = prepare_data("imagefolder", tmp_path, image_size=8, val_fraction=0.5, download=False)
    assert data.val_source == "holdout" and len(data.val) + len(data.train) == 6 and data.classnames == ["a", "b"]


def test_image_folder_labels_mean_the_same_class_in_a_split_that_lacks_one(tmp_path):
    _write_folder(tmp_path, "train", ["ant", "bee", "cat"])
    _write_folder(tmp_path, "test", ["ant", "cat"])
    data = prepare_data("imagefolder", tmp_path, image_size=8, val_fraction=0, download=False)
    assert data.classnames == ["ant", "bee", "cat"]
    assert sorted({int(data.test[i][1]) for i in range(len(data.test))}) == [0, 2]  # cat is still 2, not 1


def test_a_folder_of_one_class_is_refused_and_a_class_without_training_images_is_told(tmp_path, vprompt_caplog):
    _write_folder(tmp_path / "one", "train", ["cat"])
    _write_folder(tmp_path / "one", "test", ["cat"])
    told = f"in {tmp_path / 'one'}: its train split has 1 class ['cat']; a classifier needs"
    with pytest.raises(ValueError, match=re.escape(told)):
        prepare_data("imagefolder", tmp_path / "one", image_size=8, download=False)
    _write_folder(tmp_path / "test-only", "test", ["cat"])  # (what zeroshot and eval read: no 100 % of one class)
    with pytest.raises(ValueError, match=re.escape("its test split has 1 class ['cat']; a classifier needs")):
        prepare_data("imagefolder", tmp_path / "test-only", image_size=8, download=False, read="test")
    with pytest.raises(FileNotFoundError, match="is a file; give the folder that holds the dataset's files"):
        prepare_data("mnist", next((tmp_path / "one" / "test" / "cat").iterdir()), image_size=8, download=False)
    _write_folder(tmp_path / "two", "train", ["ant", "cat"])
    (tmp_path / "two" / "train" / "bee").mkdir()
    _write_folder(tmp_path / "two", "test", ["ant", "bee", "cat"])
    data = prepare_data("imagefolder", tmp_path / "two", image_size=8, download=False)
    assert data.classnames == ["ant", "bee", "cat"]
    assert "no training image of 1 class(es), 'bee': the prompt never learns them" in vprompt_caplog.text
    _write_folder(tmp_path / "two", "test", list("cdefghij"))  # many such classes: the first 5 and a count
    prepare_data("imagefolder", tmp_path / "two", image_size=8, download=False)
    assert "no training image of 9 class(es), 'bee', 'c', 'd', 'e', 'f' and 4 more: the" in vprompt_caplog.text
    # a class folder empty in every split is no class (before, the head could predict it, and no split tell)
    (tmp_path / "two" / "test" / "dog").mkdir()
    (tmp_path / "two" / "train" / "dog").mkdir()
    told = "class folder(s) 'dog' hold no image in any split (train/dog, test/dog) under"
    with pytest.raises(FileNotFoundError, match=re.escape(told)):
        prepare_data("imagefolder", tmp_path / "two", image_size=8, download=False)


def test_a_label_outside_the_classes_is_refused_naming_the_image(tmp_path, monkeypatch):
    # a list file or class folder naming a class the dataset lacks (GTSRB's 00099/, a CLASS-ID 40 of Pets)
    from vprompt.data import DatasetSpec, FileDataset
    from vprompt.data import registry as data_registry

    _write_folder(tmp_path, "train", ["a", "b"])
    files = sorted(str(f) for f in (tmp_path / "train").rglob("*.png"))

    def build(root, split="train", transform=None, download=False):
        labels = [0, 1] * (len(files) // 2) if split == "train" else [0, 1, 5, 2]
        return FileDataset(list(zip(files, labels)), ["a", "b"], transform)

    monkeypatch.setitem(data_registry._REGISTRY, "listed", DatasetSpec(name="listed", builder=build, num_classes=2))
    told = f"2 test image(s) with a label outside its 2 classes (0..1), the first {files[2]} with label 5; fix or"
    for read in ("all", "test"):
        with pytest.raises(DataFileError, match=re.escape(told)):
            prepare_data("listed", tmp_path, image_size=8, download=False, read=read)
    assert len(prepare_data("listed", tmp_path, image_size=8, download=False, read="train").train) > 0


def test_image_folder_skips_hidden_folders_and_files_and_names_a_broken_image(tmp_path, monkeypatch):
    _write_folder(tmp_path, "train", ["ant", "bee", ".ipynb_checkpoints"])
    (tmp_path / "train" / "ant" / "._0.png").write_bytes(b"macOS metadata")
    (tmp_path / "train" / "bee" / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "bee" / ".cache" / "x.png")
    ds = create_dataset("imagefolder", tmp_path, "train")
    assert ds.classnames == ["ant", "bee"] and len(ds) == 6  # no hidden class shifting every label by one
    broken = tmp_path / "train" / "bee" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])  # cut short, as an interrupted copy leaves it
    with pytest.raises(OSError, match=re.escape(f"{broken}: cannot decode this image")):
        create_dataset("imagefolder", tmp_path, "train")[4]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)  # Pillow refuses an image of over twice as many pixels
    with pytest.raises(OSError, match=re.escape(f"{tmp_path / 'train' / 'ant' / '0.png'}: cannot decode this image")):
        create_dataset("imagefolder", tmp_path, "train")[0]  # (a DecompressionBombError, no OSError)
    monkeypatch.undo()
    listed = create_dataset("imagefolder", tmp_path, "train")
    broken.unlink()  # gone after the listing: said so, not "cannot decode"
    with pytest.raises(OSError, match=re.escape(f"{broken}: no such file (moved or deleted after the data")):
        listed[4]


def test_image_folder_walks_linked_folders_once_and_lists_files_only(tmp_path):
    _write_folder(tmp_path, "train", ["ant", "bee"])
    _write_folder(tmp_path / "more", "train", ["ant"])  # 3 images, linked in below the class folder
    os.symlink(tmp_path / "more" / "train" / "ant", tmp_path / "train" / "ant" / "batch2")
    os.symlink(tmp_path / "train" / "ant", tmp_path / "train" / "ant" / "loop")  # a link to itself: walked once
    (tmp_path / "train" / "bee" / "album.jpg").mkdir()  # a folder named like an image is no image
    ds = create_dataset("imagefolder", tmp_path, "train")
    names = [Path(p).relative_to(tmp_path / "train").as_posix() for p, _ in ds.samples]
    assert names == ["ant/0.png", "ant/1.png", "ant/2.png", "ant/batch2/0.png", "ant/batch2/1.png", "ant/batch2/2.png",
                     "bee/0.png", "bee/1.png", "bee/2.png"]  # fmt: skip
    gone = tmp_path / "train" / "bee" / "gone.png"
    os.symlink(tmp_path / "gone.png", gone)  # a broken link is named, not skipped: the data would shrink unseen
    with pytest.raises(DataFileError, match=re.escape(f"{gone}: a link to {tmp_path / 'gone.png'}, which is not")):
        create_dataset("imagefolder", tmp_path, "train")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_broken_image_stops_a_run_with_one_line_naming_it(tmp_path, capsys, workers):
    from vprompt import cli

    from .conftest import tiny_run_args

    _write_folder(tmp_path / "data", "train", ["ant", "bee"], n=4)
    _write_folder(tmp_path / "data", "test", ["ant", "bee"], n=2)
    broken = tmp_path / "data" / "train" / "bee" / "2.png"
    broken.write_text("not an image")
    folder = ("--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--val-fraction", "0")
    assert cli.main(tiny_run_args(tmp_path, *folder, "--workers", str(workers), "-b", "4", epochs=1)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "worker process" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"vprompt train: error: {broken}: cannot decode this image") and last.endswith("the file")


def test_a_validation_split_that_cannot_be_drawn_says_why(tmp_path, vprompt_caplog):
    _write_folder(tmp_path, "train", ["ant", "bee"], n=1)
    _write_folder(tmp_path, "test", ["ant", "bee"], n=1)
    data = prepare_data("imagefolder", tmp_path, image_size=8, val_fraction=0.5, download=False)
    assert (
        data.val is None
        and "no class has 2 training images" in vprompt_caplog.text
        and "--val-fraction 0" not in vprompt_caplog.text
    )


def test_cifar_errors_tell_a_missing_folder_from_a_corrupt_one(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="expected .*cifar-10-batches-py/"):
        create_dataset("cifar10", tmp_path, "test")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not the real file")
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py is incomplete or corrupt.*delete it"):
        create_dataset("cifar10", tmp_path, "test")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train/ and test/"):
        create_dataset("imagefolder", tmp_path / "nope", "train")


def test_transform_is_shrink_then_crop():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    shrunk = np.asarray(img.resize((40, 20), Image.BICUBIC))  # the shorter side to 20, the aspect ratio kept
    centre = build_transform(20)(img)
    assert centre.dtype == torch.uint8 and centre.shape == (3, 20, 20)
    assert np.array_equal(centre.permute(1, 2, 0).numpy(), shrunk[:, 10:30])
    for _ in range(5):  # a training crop is some 20 x 20 window of the same shrunk image
        crop = build_transform(20, random_crop=True)(img).permute(1, 2, 0).numpy()
        assert any(np.array_equal(crop, shrunk[:, j : j + 20]) for j in range(21))


def test_16bit_and_float_grayscale_images_decode_to_their_8bit_values(tmp_path):
    from PIL import Image

    from vprompt.data.base import load_rgb
    from vprompt.errors import DataFileError

    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ..., 65535
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "g16.png"))[..., 0], expected)  # PIL alone: 99 % white
    Image.fromarray(expected.astype(np.float32) / 255).save(tmp_path / "f.tif")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "f.tif"))[..., 1], expected)
    Image.fromarray(np.full((4, 4), 1_500_000, dtype=np.int32)).save(tmp_path / "i32.tif")  # beyond 16 bits
    with pytest.raises(DataFileError, match="i32.tif: cannot decode .* outside 0..65535"):
        load_rgb(tmp_path / "i32.tif")
    Image.fromarray(ramp // 256).save(tmp_path / "dark.pgm")  # a dark 16-bit image: all its values below 256
    assert Image.open(tmp_path / "dark.pgm").mode == "I"  # as Pillow opens 16-bit PGM (and, once, PNG) files
    assert np.asarray(load_rgb(tmp_path / "dark.pgm")).max() <= 1  # as dark as it is, not read as 8-bit


def test_synthetic_options_are_checked():
    from vprompt.data import create_dataset

    for key, value in (("n_train", -5), ("n_test", "abc"), ("size", 1), ("seed", 0.5)):
        with pytest.raises(ValueError, match=f"--dataset-option {key}={value!r} must be a whole number"):
            create_dataset("synthetic", None, "train" if key != "n_test" else "test", **{key: value})
    one, other = (create_dataset("synthetic", None, "train", n_train=8, seed=s) for s in ("1", 2))  # as documented
    assert not torch.equal(one.images, other.images)


def test_every_dataset_option_has_a_default_the_registry_can_read():
    import inspect

    import vprompt.data.benchmark  # noqa: F401  (registers the benchmark datasets)
    import vprompt.data.shift  # noqa: F401
    from vprompt.data import get_dataset_spec, list_datasets

    # A default spelled out is no other run (changed_settings) only where the registry sees the builder's defaults,
    # through any partial or wrapper around it.
    for name in list_datasets():
        spec = get_dataset_spec(name)
        params = inspect.signature(spec.builder).parameters
        for option in spec.options:
            assert params[option].default is not inspect.Parameter.empty, (name, option)
            assert spec.explicit_options({option: params[option].default}) == {}, (name, option)
            assert spec.explicit_options({option: "another"}) == {option: "another"}, (name, option)


def test_a_run_resumed_on_other_data_is_refused_naming_what_changed(tmp_path, monkeypatch, capsys):
    from vprompt import cli, engine

    from .conftest import tiny_run_args

    data = tmp_path / "data"
    _write_folder(data, "train", ["ant", "bee"], n=10)
    _write_folder(data, "test", ["ant", "bee"], n=2)
    real, calls = engine.train_one_epoch, []

    def stop_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", stop_in_epoch_2)
    args = tiny_run_args(
        tmp_path, "--dataset", "imagefolder", "--data-dir", str(data), "-b", "4", "--workers", "0", epochs=3
    )
    assert cli.main(args) == 130  # last.pt of epoch 1
    monkeypatch.setattr(engine, "train_one_epoch", real)
    resume = [*args, "--resume", "latest"]
    Image.new("RGB", (20, 12)).save(data / "train" / "ant" / "new.png")
    capsys.readouterr()
    assert cli.main(resume) == 2  # the validation split would be drawn from other images
    assert "the data changed since the run started (train images: 18 then, 19 now)" in capsys.readouterr().err
    (data / "train" / "ant" / "new.png").unlink()
    _write_folder(data, "train", ["cow"], n=10)
    assert cli.main(resume) == 2
    assert "(classes: 2 then, 3 now, with 'cow'; train images: 18 then, 27 now; val images" in capsys.readouterr().err
    for f in (data / "train" / "cow").iterdir():
        f.unlink()
    (data / "train" / "cow").rmdir()
    first = sorted((data / "train" / "ant").iterdir())[0]
    first.rename(first.with_name("zz.png"))  # as many images, but the saved split's indices mean others now
    assert cli.main(resume) == 2
    assert "other files, pixels or labels (renamed, replaced, edited or relabelled)" in capsys.readouterr().err
    first.with_name("zz.png").rename(first)
    moved = tmp_path / "moved"
    data.rename(moved)  # the same files elsewhere are the same data
    assert cli.main([*resume, "--data-dir", str(moved)]) == 0


def test_a_runs_data_saved_before_a_part_of_the_identity_existed_is_compared_on_what_it_saved():
    from vprompt.runs import data_changes

    now = {"classes": ["a", "b"], "train images": 4, "val images": 2, "split": "s", "images": "i"}
    assert data_changes({k: v for k, v in now.items() if k != "images"}, now) == ""
    assert "other files, pixels or labels" in data_changes({**now, "images": "other"}, now)
    assert data_changes({**now, "split": "t", "images": "other"}, now) == (
        "other images held out for validation or drawn for training"
    )


def test_images_held_in_memory_are_known_by_their_pixels_not_only_their_labels():
    from vprompt.data import DataSplits
    from vprompt.data.base import ArrayDataset, LabeledSubset
    from vprompt.runs import data_changes, data_identity, split_changes

    def splits(images):
        full = ArrayDataset(images, [0, 1, 0, 1, 0, 1], ["a", "b"])
        return DataSplits(LabeledSubset(full, [0, 1, 2, 3]), LabeledSubset(full, [4, 5]), None, ["a", "b"])

    images = np.zeros((6, 4, 4), dtype=np.uint8)
    was = data_identity(splits(images))
    assert data_changes(was, data_identity(splits(images.copy()))) == ""
    images[5, 2, 2] = 255  # one pixel of a validation image, the labels as they were
    assert "other files, pixels or labels" in data_changes(was, data_identity(splits(images)))
    assert (
        data_changes({k: v for k, v in was.items() if k not in ("pixels", "val")}, data_identity(splits(images))) == ""
    )
    # Evaluating on the validation split asks for its images alone (a run saved without them: for all it saved).
    assert "other files, pixels or labels" in split_changes(was, data_identity(splits(images)), "val")
    images[5, 2, 2], images[0, 1, 1] = 0, 255  # one pixel of a training image
    assert split_changes(was, data_identity(splits(images)), "val") == ""
    assert "other files, pixels or labels" in split_changes(was, data_identity(splits(images)), "train")
    old = {k: v for k, v in was.items() if k != "val"}
    assert "other files, pixels or labels" in split_changes(old, data_identity(splits(images)), "val")


def test_each_class_gives_its_rounded_share_to_validation():
    # 10 % of 17, 26 and 9 images is 1.7, 2.6 and 0.9: rounded, not cut down (which would take 1, 2 and 0 -> 1).
    sizes = (17, 26, 9)
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    train, val = holdout_split(labels, 0.1, seed=0)
    assert np.bincount([labels[i] for i in val]).tolist() == [round(0.1 * n) for n in sizes]
    assert np.bincount([labels[i] for i in train]).tolist() == [n - round(0.1 * n) for n in sizes]


def test_validation_images_held_out_of_image_files_are_centre_cropped_not_randomly(tmp_path):
    # Wide noise images: a random training crop of one is almost never its centre crop.
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (12, 60, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = prepare_data("imagefolder", tmp_path, image_size=8, val_fraction=0.5, random_crop=True, download=False)
    assert data.val_source == "holdout" and len(data.val) == 6
    centre = build_transform(8)
    for i in range(len(data.val)):
        path = data.val.dataset.samples[data.val.indices[i]][0]
        with Image.open(path) as img:
            expected = centre(img.convert("RGB"))
        for _ in range(2):  # the same pixels however often it is read: selection is not on random crops
            assert torch.equal(data.val[i][0], expected)


def _with_official_val(monkeypatch, val):
    from vprompt.data import DatasetSpec
    from vprompt.data import registry as data_registry
    from vprompt.data.datasets import synthetic_dataset

    def builder(split, **kw):
        return val() if split == "val" else synthetic_dataset(n_train=60, n_test=20, split=split)

    spec = DatasetSpec(name="synthetic_val", builder=builder, splits=("train", "val", "test"))
    monkeypatch.setitem(data_registry._REGISTRY, "synthetic_val", spec)


def test_an_empty_official_validation_split_is_replaced_by_one_held_out(monkeypatch, vprompt_caplog):
    names = [f"class {k}" for k in range(10)]
    _with_official_val(monkeypatch, lambda: ArrayDataset(np.zeros((0, 8, 8, 3), np.uint8), [], names))
    data = prepare_data("synthetic_val", None, image_size=32, val_fraction=0.2, split_seed=1)
    assert data.val_source == "holdout" and len(data.val) > 0
    assert len(data.train) + len(data.val) == 60
    assert data.split_indices["val"] == holdout_split(_train_targets(), 0.2, 1)[1]
    assert "the official validation split is empty" in vprompt_caplog.text


def _train_targets():
    from vprompt.data.datasets import synthetic_dataset

    return synthetic_dataset(n_train=60, n_test=20).targets.tolist()


def test_an_official_validation_image_of_a_class_the_dataset_lacks_is_refused(monkeypatch):
    from vprompt.data.datasets import synthetic_dataset

    def val():
        ds = synthetic_dataset(n_train=60, n_test=20, split="test")
        ds.targets[3] = 10  # (10 classes: 0..9)
        return ds

    _with_official_val(monkeypatch, val)
    with pytest.raises(DataFileError, match=r"1 val image\(s\) with a label outside its 10 classes .* image 3 "):
        prepare_data("synthetic_val", None, image_size=32)
