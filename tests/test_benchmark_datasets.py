"""The benchmark datasets: metadata, the shipped seeded splits, and for every dataset a tiny fixture in its real
on-disk format, generated here and read through the real loader (class count and names, split sizes, labels,
decoded images)."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vprompt.data import (
    ArrayDataset,
    DatasetNotFoundError,
    MissingDependencyError,
    build_transform,
    create_dataset,
    get_dataset_spec,
    prepare_data,
)
from vprompt.data.benchmark import BENCHMARK_DATASETS
from vprompt.data.benchmark_base import (
    SeededSplit,
    load_metadata,
    load_seeded_split,
    make_seeded_split,
    name_key,
    write_seeded_split,
)
from vprompt.errors import DataFileError

sio = pytest.importorskip("scipy.io")

TF = build_transform(16)


def _img(path, color=(200, 30, 60), size=(20, 14), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _names(name):
    return load_metadata(name)["classnames"]


def _check(ds, name, n, targets=None, image_shape=(3, 16, 16)):
    """Names == the metadata list, ``n`` items, labels in range (and as expected), the first image decodes."""
    names = _names(name)
    assert list(ds.classnames) == names and len(names) == get_dataset_spec(name).num_classes
    assert len(ds) == n
    y = [int(t) for t in ds.targets]
    assert all(0 <= t < len(names) for t in y)
    if targets is not None:
        assert y == targets
    img, label = ds[0]
    assert img.dtype == torch.uint8 and tuple(img.shape) == image_shape and label == y[0]


def _make(name, root, split="train", **options):
    return create_dataset(name, root, split, transform=TF, **options)


# ----------------------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_metadata_is_complete_and_consistent(name):
    meta = load_metadata(name)
    spec = get_dataset_spec(name)
    assert meta["source"] and len(meta["classnames"]) == spec.num_classes == len(spec.classnames)
    assert len({name_key(c) for c in meta["classnames"]}) == spec.num_classes  # names stay distinguishable
    assert meta["templates"] and list(spec.templates) == meta["templates"]
    assert all(t.count("{}") == 1 for t in meta["templates"])
    assert spec.description and name in BENCHMARK_DATASETS


def test_folder_orders_match_torchvision_sorting():
    # ImageFolder (EuroSAT) and Caltech101 sort folder names with Python's sorted(); the metadata must follow.
    for name, total in (("eurosat", 27_000), ("caltech101", 8_677)):
        meta = load_metadata(name)
        assert meta["folders"] == sorted(meta["folders"]) and sum(meta["class_counts"]) == total
        assert len(meta["folders"]) == len(meta["class_counts"]) == len(meta["classnames"])


def test_flowers_order_agrees_with_torchvision_names():
    from torchvision.datasets import Flowers102

    ours = [name_key(c) for c in _names("flowers102")]
    theirs = [name_key(c) for c in Flowers102.classes]
    assert sum(a == b for a, b in zip(ours, theirs)) >= 100  # CLIP renamed 2: "pink-yellow dahlia?", "ball moss"


# ------------------------------------------------------------------------------------------ shipped splits
@pytest.mark.parametrize(
    "name,n,sizes",
    [
        ("eurosat", 27_000, (13_500, 5_400, 8_100)),
        ("sun397", 108_754, (54_377, 21_751, 32_626)),
        ("caltech101", 8_677, (4_330, 1_736, 2_611)),
    ],
)
def test_shipped_splits_partition_the_dataset_and_are_reproducible(name, n, sizes):
    s = load_seeded_split(name)
    assert s.num_samples == n and tuple(s.sizes().values()) == sizes
    everything = np.concatenate(list(s.indices.values()))
    assert len(np.unique(everything)) == n and everything.min() == 0 and everything.max() == n - 1
    assert all(np.all(np.diff(v) > 0) for v in s.indices.values())  # sorted, hence no duplicates within a split
    again = make_seeded_split(n, seed=s.seed, class_counts=load_metadata(name).get("class_counts"))
    assert all(np.array_equal(again.indices[k], s.indices[k]) for k in s.indices)
    if s.class_counts:  # stratified: every class gives round(20 %) to val and round(30 %) to test
        bounds = np.cumsum((0, *s.class_counts))
        for k, frac in (("val", 0.2), ("test", 0.3)):
            per_class = np.histogram(s.indices[k], bins=bounds)[0]
            assert per_class.tolist() == [int(np.floor(frac * c + 0.5)) for c in s.class_counts]


def test_seeded_split_rejects_a_copy_of_the_wrong_size(tmp_path):
    for c in ("AnnualCrop", "Forest"):
        _img(tmp_path / "eurosat" / "2750" / c / f"{c}_1.jpg")
    with pytest.raises(DatasetNotFoundError, match=r"found 2 images .* indexes 27,000"):
        _make("eurosat", tmp_path)


# --------------------------------------------------------------------------------- torchvision fixtures
def test_cifar_gets_clip_names(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # unavoidable: md5 of the real files
    rng = np.random.default_rng(0)

    def dump(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(obj))

    base = tmp_path / "cifar-100-python"
    raw = [c.replace(" ", "_") for c in _names("cifar100")]  # torchvision's raw names: "aquarium_fish"
    dump(base / "meta", {"fine_label_names": raw, "coarse_label_names": ["x"] * 20})
    for split, n in (("train", 5), ("test", 3)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        dump(base / split, {"data": data, "fine_labels": [1, 99, 0, 47, 2][:n], "coarse_labels": [0] * n})
    ds = _make("cifar100", tmp_path, "test")
    _check(ds, "cifar100", 3, [1, 99, 0], image_shape=(3, 32, 32))
    assert ds.classnames[1] == "aquarium fish" and get_dataset_spec("cifar100").templates[0] == "a photo of a {}."

    base = tmp_path / "cifar-10-batches-py"
    dump(base / "batches.meta", {"label_names": _names("cifar10")})
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump(base / f, {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [9, 0]})
    _check(_make("cifar10", tmp_path), "cifar10", 10, [9, 0] * 5, image_shape=(3, 32, 32))


def test_flowers102(tmp_path, monkeypatch):
    import torchvision.datasets.flowers102 as tv_flowers

    monkeypatch.setattr(tv_flowers, "check_integrity", lambda *a, **k: True)  # unavoidable: md5 of the .mat files
    base = tmp_path / "flowers-102"
    labels = np.array([1, 102, 5, 7, 50, 3, 60])  # 1-based, image i+1 has labels[i]
    for i in range(len(labels)):
        _img(base / "jpg" / f"image_{i + 1:05d}.jpg")
    sio.savemat(base / "imagelabels.mat", {"labels": labels[None]})
    sio.savemat(base / "setid.mat", {"trnid": [[1, 2]], "valid": [[3, 4]], "tstid": [[5, 6, 7]]})
    _check(_make("flowers102", tmp_path), "flowers102", 2, [0, 101])
    _check(_make("flowers102", tmp_path, "val"), "flowers102", 2, [4, 6])
    data = prepare_data("flowers102", tmp_path, image_size=16, download=False)
    assert data.val_source == "official" and (len(data.train), len(data.val), len(data.test)) == (2, 2, 3)
    assert data.templates[0] == "a photo of a {}, a type of flower."
    # An extraction stopped part-way leaves images out that torchvision's check (its .mat files) does not see.
    (base / "jpg" / "image_00007.jpg").unlink()
    gone = re.escape(f"1 of the 3 images it lists are not there (the first: {base / 'jpg' / 'image_00007.jpg'})")
    with pytest.raises(DatasetNotFoundError, match=f"dataset flowers102 .*: {gone}; complete the folder"):
        _make("flowers102", tmp_path, "test")


def test_food101(tmp_path):
    base = tmp_path / "food-101"
    meta = {"apple_pie": ["apple_pie/11"], "cheese_plate": ["cheese_plate/22"], "waffles": ["waffles/33", "waffles/44"]}
    for rels in meta.values():
        for r in rels:
            _img(base / "images" / f"{r}.jpg")
    (base / "meta").mkdir()
    (base / "meta" / "train.json").write_text(json.dumps(meta))
    (base / "meta" / "test.json").write_text(json.dumps({"waffles": ["waffles/33"]}))
    _check(_make("food101", tmp_path), "food101", 4, [0, 16, 100, 100])  # 16 = cheese plate (before cheesecake)
    _check(_make("food101", tmp_path, "test"), "food101", 1, [100])


def test_eurosat_with_a_split_file(tmp_path):
    folders = load_metadata("eurosat")["folders"]
    counts = [3, 3, 3, 2, 2, 2, 2, 3, 2, 3]  # the real per-class proportions, scaled down
    for c, n in zip(folders, counts):
        for i in range(n):
            _img(tmp_path / "eurosat" / "2750" / c / f"{c}_{i + 1}.jpg")
    split_file = tmp_path / "split.npz"
    split = make_seeded_split(sum(counts), class_counts=counts)
    write_seeded_split(split_file, split)
    parts = {s: _make("eurosat", tmp_path, s, split_file=str(split_file)) for s in ("train", "val", "test")}
    for s, ds in parts.items():
        _check(ds, "eurosat", len(split.indices[s]))
    assert sum(len(d) for d in parts.values()) == 25
    all_targets = sorted(t for d in parts.values() for t in d.targets)
    assert all_targets == sorted(np.repeat(np.arange(10), counts).tolist())
    sea = [p for p, y in parts["train"].samples if "SeaLake" in p]
    assert sea and all(y == _names("eurosat").index("lake or sea") for p, y in parts["train"].samples if p in sea)
    write_seeded_split(split_file, make_seeded_split(25, class_counts=[4, 2, 3, 2, 2, 2, 2, 3, 2, 3]))
    where = tmp_path / "eurosat" / "2750" / "AnnualCrop"  # the class's name and folder
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"class 0 ('annual crop land', {where}) has 3 images")):
        _make("eurosat", tmp_path, split_file=str(split_file))


def test_a_split_file_whose_splits_overlap_or_overrun_is_refused(tmp_path):
    good = make_seeded_split(10, seed=0)
    path = tmp_path / "split.npz"
    for indices, needle in (
        ({**good.indices, "test": np.append(good.indices["test"], good.indices["train"][0])}, "share images"),
        ({**good.indices, "val": np.append(good.indices["val"], 10)}, "outside 0..9"),
    ):
        write_seeded_split(path, SeededSplit(indices, 10, (), 0, good.fractions))
        with pytest.raises(DatasetNotFoundError, match=f"split file {path}: .*{needle}"):
            load_seeded_split("eurosat", path)
    np.savez(path, train=good.indices["train"])
    with pytest.raises(DatasetNotFoundError, match="it has no val, test, num_samples"):
        load_seeded_split("eurosat", path)
    path.write_text("not a split")
    with pytest.raises(DatasetNotFoundError, match=f"split file {path}"):
        load_seeded_split("eurosat", path)
    write_seeded_split(path, good)
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], whole[:100] + bytes(b ^ 0xFF for b in whole[100:120]) + whole[120:]):
        path.write_bytes(damaged)  # cut short, or bytes changed inside a compressed array
        with pytest.raises(DatasetNotFoundError, match=f"split file {path}"):
            load_seeded_split("eurosat", path)
    with pytest.raises(DatasetNotFoundError, match="split file 5: "):  # as a YAML file gives split_file: 5
        load_seeded_split("eurosat", 5)


def test_sun397(tmp_path):
    base = tmp_path / "SUN397"
    # ClassName.txt as released: "/<first letter>/<class>[/<subclass>]", with "_" inside names.
    multi = {"apartment building outdoor": "apartment_building/outdoor", "bakery shop": "bakery/shop"}
    raw = [multi.get(c, c.replace(" ", "_")) for c in _names("sun397")]
    base.mkdir()
    (base / "ClassName.txt").write_text("".join(f"/{r[0]}/{r}\n" for r in raw))
    files = [
        "a/abbey/sun_b.jpg",
        "a/abbey/sun_a.jpg",
        "a/apartment_building/outdoor/sun_c.jpg",
        "y/youth_hostel/sun_d.jpg",
    ]
    files.append("b/bakery/shop/sun_e.jpg")
    for f in files:
        _img(base / f)
    split_file = tmp_path / "split.npz"
    split = make_seeded_split(5, seed=1)
    write_seeded_split(split_file, split)
    order = sorted(files)  # the split indexes the files sorted by path
    expected = {"a/abbey": 0, "a/apartment_building/outdoor": 8, "b/bakery/shop": 27, "y/youth_hostel": 396}
    for s in ("train", "val", "test"):
        ds = _make("sun397", tmp_path, s, split_file=str(split_file))
        want = [expected[order[i].rsplit("/", 1)[0]] for i in split.indices[s]]
        _check(ds, "sun397", len(split.indices[s]), want)
    with pytest.raises(DatasetNotFoundError, match=r"found 5 images .* indexes 108,754"):
        _make("sun397", tmp_path)


def test_svhn_is_in_memory(tmp_path, monkeypatch):
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)  # unavoidable: md5 of the .mat file
    (tmp_path / "svhn").mkdir()
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    sio.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10]])})
    ds = _make("svhn", tmp_path, "test")
    _check(ds, "svhn", 4, [0, 1, 9, 0], image_shape=(3, 32, 32))
    assert torch.equal(ds.images[1], torch.from_numpy(x[..., 1]).permute(2, 0, 1))
    assert isinstance(ds, ArrayDataset)  # decoded once, in memory


#: The cat breeds: the release spells them capitalized ("British_Shorthair"), the dogs in lower case.
_CATS = {"Abyssinian", "Bengal", "Birman", "Bombay", "British Shorthair", "Egyptian Mau", "Maine Coon", "Persian"}
_CATS |= {"Ragdoll", "Russian Blue", "Siamese", "Sphynx"}


def _pets_raw(name):
    """The image-id stem and species (1 cat, 2 dog) of a breed, as in annotations/list.txt."""
    cat = name in _CATS
    return (name if cat else name.lower()).replace(" ", "_"), 1 if cat else 2


def test_pets(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    lines = []
    for k, name in enumerate(_names("pets")):  # every class once, as list.txt: "<id> <CLASS-ID> <SPECIES> <BREED>"
        raw, species = _pets_raw(name)
        _img(base / "images" / f"{raw}_1.jpg")
        lines.append(f"{raw}_1 {k + 1} {species} 1")
    (base / "annotations").mkdir()
    (base / "annotations" / "trainval.txt").write_text("\n".join(lines) + "\n")
    (base / "annotations" / "test.txt").write_text(lines[14] + "\n" + lines[0] + "\n")
    _check(_make("pets", tmp_path), "pets", 37, list(range(37)))
    _check(_make("pets", tmp_path, "test"), "pets", 2, [14, 0])
    # A release whose CLASS-IDs were in another order would mislabel silently: the loader refuses it.
    swapped = [lines[1].replace(" 2 ", " 1 ", 1), lines[0].replace(" 1 ", " 2 ", 1), *lines[2:]]
    (base / "annotations" / "trainval.txt").write_text("\n".join(swapped) + "\n")
    with pytest.raises(ValueError, match="class order"):
        _make("pets", tmp_path)


def test_dtd(tmp_path):
    base = tmp_path / "dtd" / "dtd"
    files = {"train": ["banded/banded_0001.jpg", "zigzagged/zigzagged_0002.jpg"], "val": ["polka-dotted/p_1.jpg"]}
    files["test"] = ["banded/banded_0003.jpg"]
    (base / "labels").mkdir(parents=True)
    for split, rels in files.items():
        for r in rels:
            _img(base / "images" / r)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(rels) + "\n")
    _check(_make("dtd", tmp_path), "dtd", 2, [0, 46])
    _check(_make("dtd", tmp_path, "val"), "dtd", 1, [30])
    assert prepare_data("dtd", tmp_path, image_size=16, download=False).val_source == "official"
    for bad in (11, "x"):
        with pytest.raises(ValueError, match=f"partition={bad!r} must be one of 1..10"):
            _make("dtd", tmp_path, partition=bad)
    (base / "images" / "banded" / "banded_0003.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"dataset dtd .*: 1 of the 1 images it lists are not there"):
        _make("dtd", tmp_path, "test")
    (base / "labels" / "test1.txt").unlink()  # a file missing inside a folder that is there: the layout is told
    with pytest.raises(
        DatasetNotFoundError,
        match=r"labels/test1\.txt'? \(expected dtd/.*; complete the folder, or delete it and pass --download\)",
    ):
        _make("dtd", tmp_path, "test")
    (base / "labels" / "test1.txt").write_text("banded/banded_0001.jpg\n\n")  # a line torchvision cannot split
    told = rf"dataset dtd: torchvision could not read the files under {re.escape(str(tmp_path / 'dtd'))}: ValueError"
    with pytest.raises(DataFileError, match=told + r".*a list file with a line of another form"):
        _make("dtd", tmp_path, "test")


def test_a_failed_download_leaves_no_empty_folder_and_does_not_ask_for_download_again(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.dtd as tv_dtd

    def offline(url, download_root, **kwargs):  # as torchvision does: the folder first, then the fetch fails
        Path(download_root).mkdir(parents=True)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_dtd, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match=r"no network.*\(expected dtd/.*; run again where the download can "
                       r"be reached, or copy the files there\)$"):  # fmt: skip
        _make("dtd", tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()  # (a later run would take an empty folder for the data's)


def test_clevr_count(tmp_path):
    base = tmp_path / "clevr" / "CLEVR_v1.0"
    for split, counts in (("train", [3, 10, 5]), ("val", [4])):
        scenes = []
        for i, c in enumerate(counts):
            fname = f"CLEVR_{split}_{i:06d}.png"
            _img(base / "images" / split / fname)
            scenes.append({"image_filename": fname, "objects": [{}] * c})
        (base / "scenes").mkdir(parents=True, exist_ok=True)
        (base / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"scenes": scenes}))
    _check(_make("clevr_count", tmp_path), "clevr_count", 3, [0, 7, 2])
    _check(_make("clevr_count", tmp_path, "test"), "clevr_count", 1, [1])  # test = CLEVR's val
    (base / "images" / "val" / ".DS_Store").write_bytes(b"")  # a file no scene names: named, not a KeyError
    with pytest.raises(DataFileError, match=r"images/val/\.DS_Store has no scene in CLEVR_val_scenes\.json; remove"):
        _make("clevr_count", tmp_path, "test")
    for f in (base / "images" / "val").iterdir():  # the images of a split missing: no empty split
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"clevr_count: files not found .*no images in its images/val/"):
        _make("clevr_count", tmp_path, "test")


def test_gtsrb(tmp_path):
    base = tmp_path / "gtsrb"
    for cls in (0, 7, 42):  # only some folders: the label must still be the folder's ClassId
        _img(base / "GTSRB" / "Training" / f"{cls:05d}" / f"00000_0000{cls % 10}.ppm", fmt="PPM")
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i, cls in enumerate((14, 3)):
            _img(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", fmt="PPM")
            w.writerow([f"{i:05d}.ppm", 20, 14, 0, 0, 19, 13, cls])
    _check(_make("gtsrb", tmp_path), "gtsrb", 3, [0, 7, 42])
    _check(_make("gtsrb", tmp_path, "test"), "gtsrb", 2, [14, 3])
    _img(base / "GTSRB" / "Training" / "extra" / "00000_00000.ppm", fmt="PPM")  # not a ClassId: named, no int() error
    with pytest.raises(DataFileError, match=r"Training/extra is not a class folder \(named by its ClassId, 00000"):
        _make("gtsrb", tmp_path)


def _cars_files(root):
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(_names("cars"), dtype=object)[None]})

    def annos(path, folder, rows):
        a = np.zeros((1, len(rows)), dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("class", "O"), ("fname", "O")])
        for i, (fname, cls) in enumerate(rows):
            a[0, i] = (0, 0, cls, fname)
            _img(base / folder / fname)
        sio.savemat(path, {"annotations": a})

    annos(base / "devkit" / "cars_train_annos.mat", "cars_train", [("00001.jpg", 1), ("00002.jpg", 196)])
    # (two rows at least: torchvision cannot iterate the 0-d array scipy makes of a single annotation)
    annos(base / "cars_test_annos_withlabels.mat", "cars_test", [("00001.jpg", 24), ("00002.jpg", 2)])


def test_cars(tmp_path):
    _cars_files(tmp_path)
    _check(_make("cars", tmp_path), "cars", 2, [0, 195])
    _check(_make("cars", tmp_path, "test"), "cars", 2, [23, 1])


def test_aircraft(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(_names("aircraft")) + "\n")
    rows = {"train": [("0034309", "707-320"), ("0034958", "F/A-18")], "val": [("1", "BAE 146-200")]}
    rows["test"] = [("2", "Yak-42")]
    for split, items in rows.items():
        for img_id, _ in items:
            _img(data / "images" / f"{img_id}.jpg")
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in items))
    names = _names("aircraft")
    _check(_make("aircraft", tmp_path), "aircraft", 2, [0, names.index("F/A-18")])
    _check(_make("aircraft", tmp_path, "val"), "aircraft", 1, [names.index("BAE 146-200")])
    _check(_make("aircraft", tmp_path, "test"), "aircraft", 1, [99])


def test_caltech101_drops_background_and_uses_the_split_file(tmp_path):
    meta = load_metadata("caltech101")
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    counts = [5 if i % 25 == 0 else 1 for i in range(101)]  # 5 classes with 5 images reach val and test
    for folder, n in zip(meta["folders"], counts):
        for i in range(n):
            _img(cats / folder / f"image_{i + 1:04d}.jpg")
    _img(cats / "BACKGROUND_Google" / "image_0001.jpg")
    split_file = tmp_path / "split.npz"
    split = make_seeded_split(sum(counts), class_counts=counts)
    write_seeded_split(split_file, split)
    parts = {s: _make("caltech101", tmp_path, s, split_file=str(split_file)) for s in ("train", "val", "test")}
    for s, ds in parts.items():
        _check(ds, "caltech101", len(split.indices[s]))
    labelled = {p.split("101_ObjectCategories/")[1].split("/")[0]: y for d in parts.values() for p, y in d.samples}
    assert "BACKGROUND_Google" not in labelled and len(labelled) == 101
    assert _names("caltech101")[labelled["Faces_easy"]] == "centered face"
    assert _names("caltech101")[labelled["airplanes"]] == "airplane"
    # What a copy picks up on its way: no BACKGROUND_Google (torchvision failed on list.remove), a Finder or Explorer
    # file in a class folder and beside them (torchvision counted it as an image, or as a class): the same data.
    shutil.rmtree(cats / "BACKGROUND_Google")
    for stray in (cats / ".DS_Store", cats / "Faces_easy" / ".DS_Store", cats / "Faces_easy" / "Thumbs.db"):
        stray.write_bytes(b"\0\0\0\1Bud1")
    again = {s: _make("caltech101", tmp_path, s, split_file=str(split_file)) for s in ("train", "val", "test")}
    assert {s: ds.samples for s, ds in again.items()} == {s: ds.samples for s, ds in parts.items()}


# ---------------------------------------------------------------------------- RESISC45, DMLab, UCF101 routes
def test_resisc45_split_files(tmp_path):
    base = tmp_path / "resisc45"
    names = _names("resisc45")
    splits = {"train": [("airplane", 0), ("wetland", 44)], "val": [("sea_ice", 35)], "test": [("airport", 1)]}
    for split, items in splits.items():
        lines = []
        for k, (cls, y) in enumerate(items):
            _img(base / "images" / cls / f"{cls}_{k:03d}.jpg")
            lines.append(f"images/{cls}/{cls}_{k:03d}.jpg {y}")
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    assert names[35] == "sea ice"
    data = prepare_data("resisc45", tmp_path, image_size=16, download=False)
    assert data.val_source == "official" and data.classnames == names
    _check(_make("resisc45", tmp_path), "resisc45", 2, [0, 44])
    _check(_make("resisc45", tmp_path, "test"), "resisc45", 1, [1])
    train_txt = (base / "train.txt").read_text()
    (base / "train.txt").write_text(train_txt, encoding="utf-8-sig")  # as Notepad saves it: with a byte-order mark
    read = _make("resisc45", tmp_path)
    assert [Path(p).relative_to(base).as_posix() for p, _ in read.samples] == [
        "images/airplane/airplane_000.jpg", "images/wetland/wetland_001.jpg"]  # fmt: skip
    _check(read, "resisc45", 2, [0, 44])
    (base / "train.txt").write_text(train_txt + "images/airplane/airplane_009.jpg 0\n")  # listed, not there
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{base / 'train.txt'}: 1 of the 3 images it lists")):
        _make("resisc45", tmp_path)
    (base / "train.txt").write_text(train_txt)
    val_txt = (base / "val.txt").read_text()
    (base / "val.txt").write_text(val_txt + "images/wetland/wetland_001.jpg 44\n")  # a training image
    for split in ("train", "val"):  # told from either side
        with pytest.raises(ValueError, match=r"(train|val)\.txt share 1 images \(e\.g\. .*wetland_001\.jpg\)"):
            _make("resisc45", tmp_path, split)
    (base / "val.txt").write_text(val_txt * 2)
    with pytest.raises(ValueError, match=re.escape(f"{base / 'val.txt'} lists an image more than once")):
        _make("resisc45", tmp_path, "val")
    (base / "val.txt").write_text("\n")  # an empty official split would select epoch 1 on no image
    assert prepare_data("resisc45", tmp_path, image_size=16, download=False).val_source != "official"
    for label in ("45", "\u00b2"):  # out of range, and a digit int() does not read
        (base / "test.txt").write_text(f"images/airport/airport_000.jpg {label}\n")
        with pytest.raises(
            ValueError, match=re.escape(f"{base / 'test.txt'}:1: expected '<relative path> <label in 0..44>'")
        ):
            _make("resisc45", tmp_path, "test")
    (base / "test.txt").write_bytes("images/a\u00e9roport.jpg 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{base / 'test.txt'}: not UTF-8 text")):
        _make("resisc45", tmp_path, "test")


def test_dmlab_class_folders_and_holdout(tmp_path):
    base = tmp_path / "dmlab"
    for split, folders in (("train", ["nearby_apple_melon"] * 3 + ["5"] * 3), ("test", ["far lemon"])):
        for i, folder in enumerate(folders):
            _img(base / split / folder / f"{i}.png")
    (base / "train" / "5" / "._0.png").write_bytes(b"macOS metadata")  # hidden files and folders are no images
    _img(base / "train" / ".ipynb_checkpoints" / "x.png")
    _check(_make("dmlab", tmp_path), "dmlab", 6, [5, 5, 5, 0, 0, 0])  # folders sorted: "5" first
    _check(_make("dmlab", tmp_path, "test"), "dmlab", 1, [4])
    _img(base / "test" / "\u2460" / "0.png")  # a digit to isdigit(), not to int(): a folder name, not a label
    with pytest.raises(ValueError, match=re.escape(f"class '\u2460' of the folder {base / 'test' / chr(0x2460)}")):
        _make("dmlab", tmp_path, "test")
    shutil.rmtree(base / "test" / "\u2460")
    (base / "val" / "5").mkdir(parents=True)  # a val/ folder without images is no split: val is held out
    data = prepare_data("dmlab", tmp_path, image_size=16, val_fraction=0.34, download=False)
    assert data.val_source == "holdout" and (len(data.train), len(data.val)) == (4, 2)


def test_ucf101_coop_layout(tmp_path):
    base = tmp_path / "ucf101"
    split = {"train": [], "val": [], "test": []}
    for s, cls, y in (("train", "Apply_Eye_Makeup", 0), ("train", "Yo_Yo", 100), ("val", "Hammering", 35)):
        rel = f"{cls}/v_{cls}_g01_c01.jpg"
        _img(base / "UCF-101-midframes" / rel)
        split[s].append([rel, y, cls])
    split["test"] = [split["train"][1]]
    (base / "split_zhou_UCF101.json").write_text(json.dumps(split))
    _check(_make("ucf101", tmp_path), "ucf101", 2, [0, 100])
    _check(_make("ucf101", tmp_path, "val"), "ucf101", 1, [_names("ucf101").index("Hammering")])
    assert prepare_data("ucf101", tmp_path, image_size=16, download=False).val_source == "official"
    strict = prepare_data("ucf101", tmp_path, image_size=16, val_fraction=0, download=False)  # strictly K-shot
    assert (strict.val, strict.val_source, len(strict.train)) == (None, "none", 2)
    (base / "UCF-101-midframes" / split["val"][0][0]).unlink()
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{base / 'split_zhou_UCF101.json'}: 1 of the 1 ")):
        _make("ucf101", tmp_path, "val")
    for text, told in (("{bad", "not a JSON file"), ('["a"]', "'train' is not a list of CoOp's entries"),
                       ('{"train": [["a.jpg", 0]]}', "'train' is not a list of CoOp's entries")):  # fmt: skip
        (base / "split_zhou_UCF101.json").write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{base / 'split_zhou_UCF101.json'}: {told}")):
            _make("ucf101", tmp_path)


def test_ucf101_split_files_beside_coops_release_give_every_split(tmp_path, caplog):
    base = tmp_path / "ucf101"
    frames = [f"Hammering/v_Hammering_g0{g}_c01.jpg" for g in (1, 2, 3)]
    for rel in frames:
        _img(base / "UCF-101-midframes" / rel)
    coop = {"train": [[frames[1], 35, "Hammering"]], "val": [[frames[0], 35, "Hammering"]], "test": []}
    (base / "split_zhou_UCF101.json").write_text(json.dumps(coop))  # CoOp's val: official training videos
    for split, rels in (("train", frames[:2]), ("test", frames[2:])):  # the user's own official split
        (base / f"{split}.txt").write_text("".join(f"UCF-101-midframes/{r} 35\n" for r in rels))
    assert get_dataset_spec("ucf101").available_splits(tmp_path, {}) == ("train", "test")
    data = prepare_data("ucf101", tmp_path, image_size=8, val_fraction=0.5, download=False)
    assert data.val_source == "holdout" and len(data.train) + len(data.val) == 2  # no val video also in train
    said = [r.getMessage() for r in caplog.records if "the .txt files give every split" in r.getMessage()]
    assert len(said) == 1 and str(base) in said[0]  # once for the folder, not once per split read


def test_ucf101_integer_labels_follow_classind(tmp_path):
    # split files carry ucfTrainTestlist/classInd.txt's ids minus 1; CLIP's list sorts two pairs the other way
    base = tmp_path / "ucf101"
    official = {"Haircut": 34, "Hammering": 35, "HammerThrow": 36, "JumpingJack": 47, "JumpRope": 48, "YoYo": 101}
    lines = []
    for cls, y in official.items():
        _img(base / "frames" / cls / "v_1.jpg")
        lines.append(f"frames/{cls}/v_1.jpg {y - 1}")
    (base / "train.txt").write_text("\n".join(lines) + "\n")
    ds = _make("ucf101", tmp_path)
    named = {Path(path).parent.name: ds.classnames[y].replace(" ", "").lower() for path, y in ds.samples}
    assert named == {cls: cls.lower() for cls in official}


@pytest.mark.parametrize("name,folder", [("resisc45", "baseball_field"), ("dmlab", "6")])  # dmlab's labels: 0..5
def test_a_class_folder_of_no_known_class_is_named(tmp_path, name, folder):
    bad = tmp_path / name / "train" / folder
    _img(bad / "a.jpg")
    with pytest.raises(ValueError, match=re.escape(f"dataset {name}: class {folder!r} of the folder {bad} ")):
        _make(name, tmp_path)


def test_ucf101_without_files_names_both_routes(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="hf_id"):
        _make("ucf101", tmp_path)


def _png(color):
    buf = io.BytesIO()
    Image.new("RGB", (20, 14), color).save(buf, format="PNG")
    return buf.getvalue()


def test_hf_route_reads_hub_parquet_files(tmp_path):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = ["airplane", "baseball_diamond", "wetland"]  # a hub copy with its own (raw) names and order
    # As the hub stores an image dataset: an image struct {bytes, path}, an integer label, and the features
    # (Image, ClassLabel with the names) in the schema's "huggingface" metadata.
    features = {"image": {"_type": "Image"}, "label": {"names": raw, "_type": "ClassLabel"}}
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    for split, labels in (("train", [0, 2, 1]), ("validation", [1])):
        images = [{"bytes": _png((10 * y, 0, 0)), "path": None} for y in labels]
        table = pa.table({"image": images, "label": labels}, schema=schema)
        pq.write_table(table, hub / "data" / f"{split}-00000-of-00001.parquet")
    kw = {"source": "hf", "hf_id": str(hub)}
    _check(_make("resisc45", tmp_path, **kw), "resisc45", 3, [0, 44, 2])
    _check(_make("resisc45", tmp_path, "val", **kw), "resisc45", 1, [2])


def test_hub_images_decode_as_files_do():
    from vprompt.data.benchmark_hf import HFImageDataset

    gray16 = Image.fromarray(np.full((4, 4), 20000, np.uint16))  # 16-bit grayscale: PIL's convert clips it to white
    pixel = np.asarray(HFImageDataset([{"image": gray16}], "image", [0], ["a"])[0][0])[0, 0]
    assert pixel.tolist() == [78, 78, 78]  # 20000 / 257, as load_rgb reads the same file


def test_hf_route_without_download_stays_offline(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(DatasetNotFoundError, match="timm/resisc45.*--download fetches it"):
        _make("resisc45", tmp_path, source="hf")  # nothing cached, and no network without --download


def test_a_hub_copy_without_a_validation_split_gets_a_held_out_one(tmp_path, monkeypatch):
    from vprompt.data import ArrayDataset, SplitNotFoundError, benchmark_hf

    val_error = [SplitNotFoundError]

    def hub_copy(name, hub_id, split, transform, download, cache_dir):  # a copy with train and test only
        if split == "val":
            raise val_error[0](f"dataset {name}: {hub_id!r}: no val")
        return ArrayDataset(np.zeros((20, 4, 4, 3), np.uint8), [i % 2 for i in range(20)], ["a", "b"])

    monkeypatch.setattr(benchmark_hf, "hub_dataset", hub_copy)
    options = {"hf_id": "someone/ucf101-copy"}
    (tmp_path / "ucf101").mkdir()  # a folder of that name does not hide the copy named
    assert "val" in get_dataset_spec("ucf101").available_splits(tmp_path, options)  # unknown: it is asked for
    data = prepare_data("ucf101", tmp_path, image_size=4, val_fraction=0.2, download=False, options=options)
    assert data.val_source == "holdout" and len(data.val) == 4 and len(data.train) == 16
    val_error[0] = DatasetNotFoundError  # the copy's validation split could not be loaded (offline): no holdout
    with pytest.raises(DatasetNotFoundError, match="no val"):
        prepare_data("ucf101", tmp_path, image_size=4, val_fraction=0.2, download=False, options=options)


def test_hf_route_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'vprompt[hf]'")):  # one CLI line
        _make("dmlab", tmp_path, source="hf")


# ------------------------------------------------------------------------------------------- missing files
@pytest.mark.parametrize(
    "name",
    [
        "flowers102",
        "food101",
        "eurosat",
        "svhn",
        "pets",
        "dtd",
        "clevr_count",
        "gtsrb",
        "aircraft",
        "caltech101",
    ],
)
def test_missing_files_is_one_clear_error(tmp_path, name):
    with pytest.raises(
        DatasetNotFoundError, match=rf"dataset {name}: files not found (or damaged )?under .*--download fetch"
    ):
        _make(name, tmp_path / "empty")


def test_a_data_dir_that_is_the_datasets_own_folder_is_told(tmp_path):
    (tmp_path / "oxford-iiit-pet" / "images").mkdir(parents=True)
    told = (
        f"--data-dir {tmp_path / 'oxford-iiit-pet'} may be the dataset's own folder: give the one above it, {tmp_path}"
    )
    with pytest.raises(DatasetNotFoundError, match=re.escape(told)):
        _make("pets", tmp_path / "oxford-iiit-pet")
    with pytest.raises(DatasetNotFoundError) as info:  # (the folder above it: no such guess)
        _make("pets", tmp_path)
    assert "own folder" not in str(info.value)


def test_sun397_is_not_downloaded_and_says_how_to_get_it(tmp_path, monkeypatch):
    import torchvision.datasets.sun397 as tv_sun397

    def dead_url(*args, **kwargs):
        raise AssertionError("SUN397's download URL is dead (pytorch/vision#9348); it must not be tried")

    monkeypatch.setattr(tv_sun397, "download_and_extract_archive", dead_url)
    hint = r"pytorch/vision#9348.*SUN397\.tar\.gz by hand .*docs/DATASETS\.md"
    with pytest.raises(
        DatasetNotFoundError, match=rf"dataset sun397: files not found or damaged under .*SUN397 .*{hint}"
    ):
        _make("sun397", tmp_path, download=True)


@pytest.mark.parametrize("name", ["cars", "flowers102", "svhn"])
def test_without_scipy_the_matlab_datasets_ask_for_it(tmp_path, monkeypatch, name):
    _cars_files(tmp_path)  # Stanford Cars' files are there: only scipy is missing
    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(MissingDependencyError, match=rf"dataset {name} .*needs scipy: pip install scipy"):
        _make(name, tmp_path)


def test_missing_cars_and_folder_routes_explain_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="stanford_cars.*by hand"):
        _make("cars", tmp_path, download=True)
    for name in ("resisc45", "dmlab", "ucf101"):
        with pytest.raises(DatasetNotFoundError, match=rf"DIR/{name}/<split>\.txt"):
            _make(name, tmp_path, source="folder")


def test_list_datasets_shows_them(capsys):
    from vprompt.cli import main

    main(["list", "datasets"])
    out = capsys.readouterr().out
    for name in BENCHMARK_DATASETS:
        assert re.search(rf"^{name}\s+\S", out, re.M), name
