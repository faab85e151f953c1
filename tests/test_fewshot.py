"""Data scale: the few-shot / fraction sampler, and how prepare_data and a run apply it."""

import json
from collections import Counter

import pytest
import torch

from vprompt import cli
from vprompt.config import resolve_config
from vprompt.data import DatasetSpec, prepare_data, subsample_per_class
from vprompt.data import registry as data_registry
from vprompt.data.datasets import synthetic_dataset
from vprompt.data.splits import derive_seed, holdout_split

from .conftest import tiny_run_args

# 5 classes with 7, 9, 11, 13, 15 images, interleaved.
LABELS = [c for c, n in enumerate((7, 9, 11, 13, 15)) for _ in range(n)]
LABELS = [LABELS[i] for i in torch.randperm(len(LABELS), generator=torch.Generator().manual_seed(0))]


def _per_class(labels, idx):
    return Counter(labels[i] for i in idx)


@pytest.mark.parametrize("shots", [1, 4, 7])
def test_exactly_k_per_class(shots):
    idx = subsample_per_class(LABELS, seed=0, shots=shots)
    assert idx == sorted(set(idx))
    assert _per_class(LABELS, idx) == {c: shots for c in range(5)}


def test_deterministic_per_split_seed_and_different_across_seeds():
    a = subsample_per_class(LABELS, seed=3, shots=2)
    assert a == subsample_per_class(torch.tensor(LABELS), seed=3, shots=2)
    draws = {tuple(subsample_per_class(LABELS, seed=s, shots=2)) for s in range(6)}
    assert len(draws) == 6


def test_subsets_are_nested_for_one_seed():
    one, four = (set(subsample_per_class(LABELS, seed=1, shots=k)) for k in (1, 4))
    assert one < four
    small, large = (set(subsample_per_class(LABELS, seed=1, fraction=f)) for f in (0.2, 0.6))
    assert small < large


def test_fraction_per_class_at_least_one():
    counts = _per_class(LABELS, subsample_per_class(LABELS, seed=0, fraction=0.3))
    assert counts == {c: round(0.3 * n) for c, n in enumerate((7, 9, 11, 13, 15))}
    tiny = _per_class(LABELS, subsample_per_class(LABELS, seed=0, fraction=0.01))
    assert tiny == {c: 1 for c in range(5)}
    assert len(subsample_per_class(LABELS, seed=0, fraction=1.0)) == len(LABELS)


def test_too_few_images_names_the_class_and_its_count():
    told = r"--shots 8: class 0 \('cat'\) has 7 training image\(s\) to draw from \(give --shots 7 \(the fewest of any "
    with pytest.raises(ValueError, match=told + r"class\), or more images of it\)$"):
        subsample_per_class(LABELS, seed=0, shots=8, classnames=["cat", "dog", "a", "b", "c"])
    # the fewest of any class, not of the first class short of K: --shots 7 would fail for the next one
    with pytest.raises(
        ValueError, match=r"class 0 has 7 training image\(s\) to draw from \(give --shots 2 \(the fewest"
    ):
        subsample_per_class([*LABELS, 5, 5], seed=0, shots=8)
    # the validation drawn from the same images is named where giving them back would be enough
    told = (
        r"7 training image\(s\) to draw from \(give --shots 7 \(.*\), or a lower --val-fraction \(validation holds 2 "
    )
    with pytest.raises(ValueError, match=told):
        subsample_per_class(LABELS, seed=0, shots=8, held_out=[0, 0, 3])
    with pytest.raises(ValueError) as info:
        subsample_per_class(LABELS, seed=0, shots=10, held_out=[0, 0, 3])  # (7 + 2 < 10)
    assert "--val-fraction" not in str(info.value)
    # A class with no image at all counts too, when the number of classes is known: no --shots 0 to give.
    with pytest.raises(ValueError, match=r"class 5 has no training image\(s\) to draw from \(give training images of"):
        subsample_per_class(LABELS, seed=0, shots=1, num_classes=6)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"shots": 0}, "--shots 0 must be a positive integer"),
        ({"fraction": 1.5}, r"--train-fraction 1.5 must be in \(0, 1\]"),
        ({"shots": 1, "fraction": 0.5}, "exactly one of --shots and --train-fraction"),
        ({}, "exactly one of --shots and --train-fraction"),
    ],
)
def test_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        subsample_per_class(LABELS, seed=0, **kwargs)


def _data(**kw):
    options = {"n_train": 200, "n_test": 20}
    return prepare_data("synthetic", None, image_size=32, options=options, **kw)


def test_prepare_data_samples_after_the_holdout_and_keeps_validation():
    full = _data(split_seed=4)
    few = _data(split_seed=4, shots=3)
    # The validation split is the one a full-data run with the same split seed holds out.
    assert few.split_indices["val"] == full.split_indices["val"]
    assert torch.equal(few.val.targets, full.val.targets)
    train_idx = few.split_indices["train"]
    assert not set(train_idx) & set(few.split_indices["val"])
    assert set(train_idx) < set(full.split_indices["train"])
    assert Counter(few.train.targets.tolist()) == {c: 3 for c in range(10)}
    # The stored indices point at the images the run trains on.
    parent = synthetic_dataset(n_train=200, n_test=20)
    assert torch.equal(few.train.images, parent.images[torch.tensor(train_idx)])
    assert _data(split_seed=4, shots=3).split_indices == few.split_indices
    assert _data(split_seed=5, shots=3).split_indices["train"] != train_idx


def test_prepare_data_fraction_and_no_validation():
    frac = _data(train_fraction=0.25)
    assert len(frac.train) == len(frac.split_indices["train"]) < 60
    assert set(Counter(frac.train.targets.tolist())) == set(range(10))
    none = _data(val_fraction=0.0, shots=2)
    assert none.val is None and none.val_source == "none"
    assert Counter(none.train.targets.tolist()) == {c: 2 for c in range(10)}


def test_prepare_data_with_an_official_validation_split(monkeypatch):
    def builder(split, **kw):
        return synthetic_dataset(n_train=60, n_test=20, split="test" if split == "val" else split)

    spec = DatasetSpec(name="synthetic_val", builder=builder, splits=("train", "val", "test"))
    monkeypatch.setitem(data_registry._REGISTRY, "synthetic_val", spec)
    data = prepare_data("synthetic_val", None, image_size=32, shots=2)
    assert data.val_source == "official" and len(data.val) == 20
    assert Counter(data.train.targets.tolist()) == {c: 2 for c in range(10)}
    assert list(data.split_indices) == ["train"]


def test_run_names_and_the_subset_seed_stream():
    assert resolve_config({"dataset": "synthetic", "shots": 3, "seed": 1}).run_name.endswith("synthetic-seed1-3shot")
    assert resolve_config({"train_fraction": 0.1}).run_name.endswith("seed42-frac0.1")
    assert resolve_config({}).run_name.endswith("seed42")
    # The subset's generator is seeded apart from the holdout's (which uses the split seed itself).
    seeds = {derive_seed(s, "train-subset") for s in range(100)}
    assert len(seeds) == 100 and not seeds & set(range(100))


def test_the_subset_is_not_the_holdout_draw_again():
    # Ten images per class: a 10 % holdout takes one per class, as does a 1-shot subset of the same images. Were both
    # seeded alike, the 1-shot subset would be the validation images themselves, for every seed.
    labels = [c for c in range(5) for _ in range(10)]
    same = [subsample_per_class(labels, seed, shots=1) == holdout_split(labels, 0.1, seed)[1] for seed in range(20)]
    assert sum(same) <= 1


def test_runs_with_different_training_seeds_train_on_the_same_shots(tmp_path):
    splits = []
    for seed in (1, 2):
        args = tiny_run_args(tmp_path, "--shots", "2", "--seed", str(seed), "-b", "16", name=f"s{seed}", epochs=1)
        assert cli.main(args) == 0
        splits.append(json.loads((tmp_path / f"s{seed}" / "splits.json").read_text()))
        results = json.loads((tmp_path / f"s{seed}" / "results.json").read_text())
        assert results["shots"] == 2 and results["n_train"] == 20
    assert splits[0]["train"] == splits[1]["train"] and splits[0]["val"] == splits[1]["val"]
    assert splits[0]["shots"] == 2 and len(splits[0]["train"]) == 20
    assert not set(splits[0]["train"]) & set(splits[0]["val"])


def test_too_many_shots_is_one_clear_line(tmp_path, capsys):
    assert cli.main(tiny_run_args(tmp_path, "--shots", "50", epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "vprompt train: error: --shots 50: class 0 ('class 0') has 11 training image(s) to draw from" in err
    assert "(give --shots 3 (the fewest of any class), or more images of it)" in err  # (11 + 1 held out < 50)
