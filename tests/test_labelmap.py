"""Label mapping (RLM / FLM / ILM) and the linear head: the algorithms, the heads, and runs through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from vprompt import cli
from vprompt.build import build_head
from vprompt.config import resolve_config
from vprompt.heads import LabelMappingHead, LinearHead, greedy_label_mapping, prediction_counts, resolve_head


def _predictions(pairs: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted source classes and labels in which target ``t`` is predicted as source ``s`` exactly ``n`` times."""
    predicted = [s for _t, s, n in pairs for _ in range(n)]
    labels = [t for t, _s, n in pairs for _ in range(n)]
    return torch.tensor(predicted), torch.tensor(labels)


# Hand-computed count table: rows are targets, columns sources.
#        s0 s1 s2 s3
#   t0 [  5, 3, 0, 0 ]
#   t1 [  6, 0, 1, 0 ]
#   t2 [  0, 0, 0, 2 ]
# Greedy: 6 -> t1:s0 (drop row t1, column s0); then 3 -> t0:s1; then 2 -> t2:s3. A per-row argmax would give t0 and
# t1 the same source s0; the one-to-one assignment must not.
TABLE = [(0, 0, 5), (0, 1, 3), (1, 0, 6), (1, 2, 1), (2, 3, 2)]
EXPECTED_COUNTS = [[5, 3, 0, 0], [6, 0, 1, 0], [0, 0, 0, 2]]


def test_count_table_and_greedy_one_to_one_assignment():
    predicted, labels = _predictions(TABLE)
    counts = prediction_counts(predicted, labels, 3, 4)
    assert counts.tolist() == EXPECTED_COUNTS
    mapping = greedy_label_mapping(counts)
    assert mapping.tolist() == [1, 0, 3]
    assert len(set(mapping.tolist())) == 3  # one-to-one


def test_greedy_ties_are_broken_deterministically():
    # All-equal counts: lowest target first, each taking the lowest free source.
    assert greedy_label_mapping(torch.ones(3, 5, dtype=torch.long)).tolist() == [0, 1, 2]
    # A tie for the largest count between (t0, s2) and (t1, s1): t0 goes first, then t1 takes s1.
    assert greedy_label_mapping(torch.tensor([[0, 0, 4], [0, 4, 4]])).tolist() == [2, 1]
    # Larger problems: always a permutation prefix, the same twice.
    counts = torch.randint(0, 5, (20, 30), generator=torch.Generator().manual_seed(0))
    a, b = greedy_label_mapping(counts), greedy_label_mapping(counts.clone())
    assert torch.equal(a, b) and len(set(a.tolist())) == 20


def test_flm_head_maps_with_the_table_and_is_computed_once():
    head = LabelMappingHead(3, 4, "flm")
    with pytest.raises(RuntimeError, match="not computed yet"):
        head(torch.zeros(1, 4))
    calls = []

    def predictions():
        calls.append(1)
        return _predictions(TABLE)

    assert head.epoch_start(0, predictions) is True
    assert head.mapping.tolist() == [1, 0, 3]
    src = torch.arange(8.0).view(2, 4)
    assert torch.equal(head(src), src[:, [1, 0, 3]])
    for epoch in (1, 2, 5):
        assert head.epoch_start(epoch, predictions) is False
    assert len(calls) == 1  # FLM never looks at the data again


def test_ilm_recomputes_every_k_epochs_and_follows_changing_predictions():
    head = LabelMappingHead(3, 4, "ilm", interval=2)
    first = _predictions(TABLE)
    # Later the prompt has moved the predictions: t0 -> s2, t1 -> s3, t2 -> s0.
    moved = _predictions([(0, 2, 4), (1, 3, 4), (2, 0, 4)])
    seen = []

    def predictions_for(epoch):
        def fn():
            seen.append(epoch)
            return first if epoch == 0 else moved

        return fn

    assert head.epoch_start(0, predictions_for(0)) and head.mapping.tolist() == [1, 0, 3]
    assert not head.epoch_start(1, predictions_for(1)) and head.mapping.tolist() == [1, 0, 3]
    assert head.epoch_start(2, predictions_for(2)) and head.mapping.tolist() == [2, 3, 0]
    assert not head.epoch_start(4, predictions_for(4))  # recomputed, but the predictions did not change
    assert seen == [0, 2, 4]


def test_rlm_is_a_seeded_one_to_one_map():
    a, b, c = (LabelMappingHead(10, 1000, "rlm", seed=s).mapping.tolist() for s in (1, 1, 2))
    assert a == b and a != c and len(set(a)) == 10 and all(0 <= s < 1000 for s in a)
    assert not LabelMappingHead(10, 1000, "rlm").epoch_start(0, lambda: pytest.fail("RLM must not look at data"))


def test_identity_map_reads_source_class_t_for_target_t():
    head = LabelMappingHead(3, 10, "identity")
    logits = torch.arange(20.0).view(2, 10)
    assert torch.equal(head(logits), logits[:, :3])
    assert not head.epoch_start(0, lambda: pytest.fail("the identity map must not look at data"))


def test_mapping_is_saved_and_restored_with_the_state_dict():
    head = LabelMappingHead(3, 4, "flm")
    head.epoch_start(0, lambda: _predictions(TABLE))
    fresh = LabelMappingHead(3, 4, "flm")
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(torch.eye(4)), torch.eye(4)[:, [1, 0, 3]])
    assert not fresh.epoch_start(3, lambda: pytest.fail("a restored FLM map must not be recomputed"))
    with pytest.raises(RuntimeError, match="its label map reads source class 3 of a model with 3"):
        LabelMappingHead(3, 3, "flm").load_state_dict(head.state_dict())  # a map made for a model of more classes


def test_too_many_target_classes_is_a_clear_error(tiny_backbone):
    with pytest.raises(ValueError, match="dataset has 100 classes and the model only 10; use --head linear"):
        LabelMappingHead(100, 10, "flm")
    cfg = resolve_config({"model": "x", "label_map": "flm"})
    with pytest.raises(ValueError, match="maps a classifier's logits.*use --head text or --head linear"):
        build_head(cfg, tiny_backbone, ["a", "b"])
    with pytest.raises(ValueError, match=r"maps a classifier's logits.*\(use --head text\)"):  # zero-shot: no training
        build_head(resolve_config({"model": "x", "label_map": "flm", "method": "zeroshot"}), tiny_backbone, ["a"])
    with pytest.raises(ValueError, match="label_map flm conflicts with head text"):
        resolve_head("text", "flm", "clip")


def test_linear_head_on_the_backbone_output(tiny_backbone):
    head = build_head(resolve_config({"head": "linear", "head_lr": 0.01}), tiny_backbone, ["a", "b", "c"])
    assert isinstance(head, LinearHead) and head.lr == 0.01
    assert head.linear.in_features == 32 and head.linear.out_features == 3  # the tiny CLIP's embedding size
    assert all(p.requires_grad for p in head.parameters())
    assert build_head(resolve_config({"head": "linear"}), tiny_backbone, ["a"]).lr == 1e-3  # the default
    assert build_head(resolve_config({"head": "linear", "head_lr": 0}), tiny_backbone, ["a"]).lr == 0  # a frozen head


def _run_args(tmp_path, *extra, name):
    # A 16-pixel canvas keeps the (any-size) CIFAR ResNet cheap on a CPU.
    return [
        "train", "--model", "cifar:resnet20", "--pretrained", "none", "--dataset", "synthetic", "--input-size", "16",
        "--dataset-option", "n_train=64", "--dataset-option", "n_test=32", "--dataset-option", "num_classes=4",
        "-b", "32", "--output", str(tmp_path), "--name", name, "--log-every", "0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "head_keys"),
    [
        (("--label-map", "ilm", "--epochs", "2"), ["head.mapping"]),
        (("--head", "linear", "--head-lr", "0.01", "--epochs", "1"), ["head.linear.bias", "head.linear.weight"]),
    ],
)
def test_classifier_runs_save_their_head_and_eval_reproduces_them(tmp_path, extra, head_keys):
    assert cli.main(_run_args(tmp_path, *extra, name="run")) == 0
    run = tmp_path / "run"
    with safe_open(str(run / "prompt.safetensors"), framework="pt") as f:
        assert sorted(k for k in f.keys() if k.startswith("head.")) == head_keys
        if "head.mapping" in head_keys:
            mapping = f.get_tensor("head.mapping").tolist()
            assert len(set(mapping)) == 4 and all(0 <= s < 10 for s in mapping)
    results = json.loads((run / "results.json").read_text())
    from vprompt.engine import evaluate_checkpoint

    again = evaluate_checkpoint(run, split="test")
    assert again["acc1"] == pytest.approx(results["test"]["acc1"]) and again["n"] == 32


def test_label_mapping_without_a_prompt_needs_no_training_epoch(tmp_path):
    """FLM alone (no prompt, 0 epochs): the map is computed before the test, not left undefined."""
    args = _run_args(tmp_path, "--method", "zeroshot", "--label-map", "flm", name="flm0")
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "flm0" / "results.json").read_text())
    assert results["epochs"] == 0 and results["test"]["n"] == 32


def test_resume_compares_the_head_a_run_uses_not_how_it_was_written(tmp_path, capsys):
    args = _run_args(tmp_path, "--epochs", "2", name="r")
    assert cli.main([*args, "--label-map", "flm"]) == 0  # a classifier's default head, written out
    assert cli.main([*args, "--resume", "latest"]) == 0  # the same run, left to its default
    capsys.readouterr()
    assert cli.main([*args, "--label-map", "rlm", "--resume", "latest"]) == 2  # another head
    assert "label_map='flm' there, 'rlm' here" in capsys.readouterr().err
    assert cli.main([*args, "--head", "linear", "--resume", "latest"]) == 2


def test_a_run_without_validation_writes_strict_json(tmp_path):
    assert cli.main(_run_args(tmp_path, "--epochs", "1", "--val-fraction", "0", name="noval")) == 0

    def strict(text):  # as JSON readers other than Python's take it: no NaN or Infinity
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))

    with safe_open(str(tmp_path / "noval" / "prompt.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert strict(meta["val_acc1"]) is None and strict(meta["epoch"]) == 1
    strict((tmp_path / "noval" / "results.json").read_text())
    for line in (tmp_path / "noval" / "metrics.jsonl").read_text().splitlines():
        strict(line)


def test_rlm_draws_from_all_the_models_classes():
    from vprompt.data.splits import torch_seed

    head = LabelMappingHead(10, 1000, "rlm", seed=3)
    expected = torch.randperm(1000, generator=torch.Generator().manual_seed(torch_seed(3)))[:10]
    assert torch.equal(head.mapping, expected) and int(head.mapping.max()) >= 10


def test_a_map_saved_before_it_was_computed_loads_as_not_computed():
    # -1 means "not computed yet": loading it is no error, and the head computes its map before it maps anything
    # rather than reading the last source class
    head = LabelMappingHead(3, 4, "flm")
    head.load_state_dict(LabelMappingHead(3, 4, "flm").state_dict())
    with pytest.raises(RuntimeError, match="not computed yet"):
        head(torch.zeros(1, 4))
    assert head.epoch_start(0, lambda: _predictions(TABLE)) and head.mapping.tolist() == [1, 0, 3]


def test_rlm_takes_any_integer_seed():
    # a seed past 64 bits wraps around as PyTorch's negative seeds do, rather than failing
    assert torch.equal(
        LabelMappingHead(10, 1000, "rlm", seed=2**64 + 3).mapping, LabelMappingHead(10, 1000, "rlm", seed=3).mapping
    )
