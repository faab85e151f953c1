import argparse
from pathlib import Path

import pytest
import torch

from vprompt.backbones import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, create_backbone
from vprompt.build import PromptedModel
from vprompt.config import resolve_config
from vprompt.heads import ClipTextHead, build_text_classifier, clean_classname
from vprompt.prompters import create_prompter

from .conftest import TINY_MODEL


def test_backbone_is_frozen_even_after_train(tiny_backbone):
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert tiny_backbone.training  # the wrapper follows, the model does not
    assert not any(m.training for m in tiny_backbone.model.modules())


def test_backbone_applies_its_own_normalization(tiny_backbone):
    x = torch.rand(2, 3, 64, 64)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    with torch.no_grad():
        expected = tiny_backbone.model.encode_image((x - mean) / std)
        assert torch.allclose(tiny_backbone(x), expected)


def test_a_clip_vit_probe_reads_the_features_before_the_projection(tiny_backbone):
    proj = tiny_backbone.model.visual.proj
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = tiny_backbone.features(x)
        assert features.shape == (2, proj.shape[0]) and proj.shape[0] != proj.shape[1]
        assert torch.allclose(features @ proj, tiny_backbone(x), atol=1e-5)
    assert tiny_backbone.model.visual.proj is proj  # put back
    tiny_backbone.model.visual.output_tokens = True  # as CoCa's tower: (pooled, tokens)
    try:
        with torch.no_grad():
            assert torch.equal(tiny_backbone.features(x), features)
    finally:
        tiny_backbone.model.visual.output_tokens = False


def test_only_the_prompt_gets_gradients(tiny_backbone):
    text = build_text_classifier(tiny_backbone.encode_text, ["cat", "dog"], ["a photo of a {}"])
    model = PromptedModel(create_prompter("evp", 64), tiny_backbone, ClipTextHead(text, 100.0))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert model.prompter.prompt.grad is not None and model.prompter.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompter.prompt"]


def test_text_classifier_cleans_names_and_ensembles(tiny_backbone):
    seen = []

    def encode(texts):
        seen.extend(texts)
        return tiny_backbone.encode_text(texts)

    emb = build_text_classifier(encode, ["Aquarium_fish", "maple-tree"], ["a {}.", "the {}!"])
    assert seen == ["a aquarium fish.", "the aquarium fish!", "a maple tree.", "the maple tree!"]
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert clean_classname("Stop-Sign_Big") == "stop sign big"


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match="did you mean ViT-B-32"):
        create_backbone("ViT-B-23")
    with pytest.raises(ValueError, match="unknown model source"):
        create_backbone("nosuch:thing")
    with pytest.raises(TypeError, match="create_backbone: name 3 must be a model name such as 'ViT-B-32', not a int"):
        create_backbone(3)
    with pytest.raises(TypeError, match="pretrained 5 must be a tag, a checkpoint path or None, not a int"):
        create_backbone(TINY_MODEL, pretrained=5)


def test_unknown_pretrained_tag_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        create_backbone(TINY_MODEL, pretrained="openai")


def test_open_clip_reads_pretrained_as_the_classifiers_do(tmp_path, monkeypatch):
    """random and false ask for random weights, and a file under ~ is a file (a config file's value is not expanded
    by a shell), as for timm, torchvision and CIFAR models; before, each was called neither a file nor a tag."""
    import open_clip

    from vprompt.backbones import local_weights

    create_backbone(TINY_MODEL)  # (makes the shipped config known to open_clip)
    saved = open_clip.create_model(TINY_MODEL)
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(saved.state_dict(), tmp_path / "clip.pt")
    backbone = create_backbone(TINY_MODEL, pretrained="~/clip.pt")
    loaded = next(m for m in backbone.modules() if hasattr(m, "visual")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    assert local_weights(TINY_MODEL, "~/clip.pt") == tmp_path / "clip.pt"  # (the probe's cache key: the same file)
    for words in ("random", "False"):
        cfg = resolve_config({"model": TINY_MODEL, "pretrained": words})
        assert cfg.pretrained is None
        backbone = create_backbone(TINY_MODEL, pretrained=words)
        loaded = next(m for m in backbone.modules() if hasattr(m, "visual")).state_dict()
        assert not all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())


def test_a_weights_name_wins_over_a_file_of_its_name_which_is_given_as_a_path(tmp_path, monkeypatch):
    """``--pretrained openai`` is the tag also beside a file called openai (``./openai`` is the file), for the
    model and the probe's cache key alike; before, the key read the file and open_clip the tag."""
    import open_clip

    from vprompt.backbones import local_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").write_bytes(b"w")
    (tmp_path / "IMAGENET1K_V1").mkdir()
    (tmp_path / "cifar10").mkdir()
    for model, tag in (("RN50", "openai"), ("tv:resnet18", "IMAGENET1K_V1"), ("cifar:resnet20", "cifar10")):
        assert local_weights(model, tag) is None, model
        assert local_weights(model, f"./{tag}") == Path(tag), model
    given = []

    def create_model(name, pretrained=None, **kwargs):
        given.append(pretrained)
        raise KeyError("stop here")

    monkeypatch.setattr(open_clip, "create_model", create_model)
    with pytest.raises(ValueError, match="not a checkpoint of RN50"):
        create_backbone("RN50", pretrained="./openai")
    assert given == [str(tmp_path / "openai")]  # (not "openai": open_clip would take it for the tag)


def test_a_file_that_is_no_checkpoint_of_the_model_is_one_line(tmp_path):
    (tmp_path / "notes.pt").write_text("not weights\n")
    torch.save({"visual.proj": torch.zeros(3, 3)}, tmp_path / "other.pt")  # some other model's state dict
    for bad in ("notes.pt", "other.pt"):
        with pytest.raises(ValueError, match=f"--pretrained .*{bad}: not a checkpoint of {TINY_MODEL} ") as info:
            create_backbone(TINY_MODEL, pretrained=str(tmp_path / bad))
        assert "\n" not in str(info.value)
    torch.save({"fc.weight": torch.zeros(2, 2), "config": argparse.Namespace(lr=1)}, tmp_path / "objects.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:100])  # a download cut short
    for model in (TINY_MODEL, "tv:resnet18"):  # (open_clip reads the file with torch.load itself)
        for bad in ("notes.pt", "cut.pt"):
            with pytest.raises(ValueError, match=rf"{bad}: not a .*\(cut short, or not a PyTorch file\)$"):
                create_backbone(model, pretrained=str(tmp_path / bad))
        with pytest.raises(ValueError, match=r"objects.pt: .*\(it holds objects other than tensors .* could run code"):
            create_backbone(model, pretrained=str(tmp_path / "objects.pt"))
    (tmp_path / "cut.safetensors").write_text("not weights\n")  # or a download cut short
    with pytest.raises(ValueError, match=r"cut.safetensors: not a safetensors file \(\w+Error: "):
        create_backbone("tv:resnet18", pretrained=str(tmp_path / "cut.safetensors"))


def test_fixed_input_size_is_enforced(tiny_backbone):
    tiny_backbone.check_input_size(64)
    with pytest.raises(ValueError, match="input size 96 "):
        tiny_backbone.check_input_size(96)


OPENAI, HALF = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize(
    ("name", "pretrained", "weights_like", "quick_gelu", "mean_std"),
    [
        ("ViT-B-32", "openai", None, True, OPENAI),  # OpenAI's weights were trained with QuickGELU
        ("ViT-L-14", "FILE", "laion2b_s32b_b82k", False, HALF),  # eval --pretrained FILE of that tag
        ("ViT-B-32", "FILE", "openai", True, OPENAI),
        ("ViT-L-14", "FILE", None, False, OPENAI),  # a bare file, tags that differ: open_clip's own
        ("PE-Core-B-16", "FILE", None, False, HALF),  # a bare file: what every tag of it shares
        ("RN50", "FILE", "elsewhere/weights.bin", True, OPENAI),  # (a run trained from a file names one)
    ],
)
def test_open_clip_weights_get_the_activation_and_normalization_they_were_trained_with(
    monkeypatch, tmp_path, name, pretrained, weights_like, quick_gelu, mean_std
):
    import open_clip
    from open_clip.transformer import QuickGELU

    real_create = open_clip.create_model
    seen = {}

    def create_tiny(model_name, pretrained=None, **kwargs):  # the options open_clip gets, on a tiny model
        seen.update(kwargs, name=model_name, pretrained=pretrained)
        kwargs.pop("cache_dir", None)
        return real_create(TINY_MODEL, pretrained=None, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create_tiny)
    if pretrained == "FILE":
        pretrained = str(tmp_path / "weights.bin")
        Path(pretrained).write_bytes(b"")
    backbone = create_backbone(name, pretrained=pretrained, weights_like=weights_like)
    assert (seen["name"], seen["pretrained"]) == (name, pretrained)
    assert any(isinstance(m, QuickGELU) for m in backbone.model.modules()) == quick_gelu
    assert torch.allclose(backbone.mean.flatten(), torch.tensor(mean_std[0]))
    assert torch.allclose(backbone.std.flatten(), torch.tensor(mean_std[1]))


@pytest.mark.parametrize(("name", "told"), [("ViT-B-32", True), ("PE-Core-B-16", False)])
def test_a_bare_weights_file_of_a_model_whose_tags_differ_in_activation_is_told(
    monkeypatch, tmp_path, vprompt_caplog, name, told
):
    import open_clip

    real_create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: real_create(TINY_MODEL))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    create_backbone(name, pretrained=str(weights))
    warning = f"model {name}: a weights file is loaded with GELU, but its tags openai, "
    assert (warning in vprompt_caplog.text) == told
    assert ("for their weights give --model ViT-B-32-quickgelu" in vprompt_caplog.text) == told


@pytest.mark.parametrize("kind", ["text", "linear"])
def test_head_logits_stay_fp32_under_autocast(kind):
    from vprompt.heads import LinearHead

    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(100, 32), dim=-1)
    if kind == "text":
        head = ClipTextHead(text, 100.0)
    else:
        head = LinearHead(32, 100)
        head.linear.weight.data, head.linear.bias.data = 100 * text, torch.zeros(100)
    feats = text[torch.randint(0, 100, (256,))] + 0.3 * torch.randn(256, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(feats)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, head(feats), atol=1e-4)  # bf16 rounds these to steps of 0.125


def test_template_sets():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from vprompt.heads import EVP_TEMPLATE, resolve_templates

    own = ["a photo of the number: {}."]
    assert resolve_templates("single", own) == [EVP_TEMPLATE]
    assert resolve_templates("ensemble", own) == own
    assert resolve_templates("ensemble") == list(OPENAI_IMAGENET_TEMPLATES)
    assert len(resolve_templates("imagenet80", own)) == 80  # METHOD 4's 80-template ensemble for any dataset
    with pytest.raises(ValueError, match="imagenet80"):
        resolve_templates("many")


def test_clip_head_is_the_scaled_cosine_with_each_class():
    from vprompt.heads import ClipTextHead

    head = ClipTextHead(torch.eye(2), logit_scale=100.0)
    assert torch.allclose(
        head(torch.tensor([[3.0, 0.0], [1.0, 1.0]])), torch.tensor([[100.0, 0.0], [70.7107, 70.7107]])
    )


def test_an_open_clip_model_saved_in_a_folder_is_read_with_its_weights_and_normalization(tmp_path, monkeypatch):
    import json

    import open_clip
    from safetensors.torch import save_file

    from vprompt.backbones import check_model, planned_input_size

    create_backbone(TINY_MODEL)  # (makes the shipped config known to open_clip)
    saved = open_clip.create_model(TINY_MODEL)
    folder = tmp_path / "clip"
    folder.mkdir()
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    config = {"model_cfg": open_clip.get_model_config(TINY_MODEL), "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=f"--model local-dir:{folder}: no weights file in {folder}"):
        create_backbone(f"local-dir:{folder}")
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    backbone = create_backbone(f"local-dir:{folder}")
    assert backbone.mean.flatten().tolist() == [0.5] * 3 and backbone.std.flatten().tolist() == [0.25] * 3
    loaded = next(m for m in backbone.modules() if hasattr(m, "visual")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())  # its weights, not random ones
    with pytest.raises(ValueError, match="brings its own weights; leave --pretrained out"):
        create_backbone(f"local-dir:{folder}", pretrained="openai")
    # none asks for random weights here too, as for every other model, where it used to load the folder's
    for name, words in ((f"local-dir:{folder}", "none"), (f"openclip:local-dir:{folder}", "random")):
        cfg = resolve_config({"model": name, "pretrained": words})
        assert cfg.pretrained == "none"
        backbone = create_backbone(cfg.model, pretrained=cfg.pretrained)
        assert backbone.std.flatten().tolist() == [0.25] * 3  # (its normalization still)
        loaded = next(m for m in backbone.modules() if hasattr(m, "visual")).state_dict()
        assert not all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    assert resolve_config({"model": TINY_MODEL, "pretrained": "None"}).pretrained is None  # (elsewhere: unset)
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json in"):
        create_backbone(f"local-dir:{tmp_path / 'nowhere'}")
    with monkeypatch.context() as m:  # an open_clip 2 create_model, without load_weights: told, not a TypeError
        m.setattr(open_clip, "create_model", lambda model_name, pretrained=None, cache_dir=None, **cfg: None)
        with pytest.raises(ValueError, match=r"--pretrained none: this open_clip_torch .* cannot leave out the weig"):
            create_backbone(f"local-dir:{folder}", pretrained="none")
    monkeypatch.delattr(open_clip.factory, "LOCAL_DIR_PREFIX")  # as an open_clip before it read such folders
    with pytest.raises(ValueError, match=r"does not read local-dir: folders; pip install -U open_clip_torch"):
        create_backbone(f"local-dir:{folder}")
    monkeypatch.undo()
    # A Hub name is no unknown model: its config is known once fetched (offline, the build says how to go round it).
    hub = "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    for name in (hub, f"openclip:{hub}", "timm:hf-hub:timm/resnet18.a1_in1k"):
        check_model(name)
        assert planned_input_size(name) is None


def test_each_template_weighs_the_same_in_the_ensemble():
    # each template's embedding is normalized before the average: one whose raw embedding is longer does not
    # outweigh the others
    def encode(texts):
        return torch.tensor([[10.0, 0.0] if t.startswith("a ") else [0.0, 1.0] for t in texts])

    emb = build_text_classifier(encode, ["cat"], ["a {}", "the {}"])
    assert torch.allclose(emb, torch.tensor([[1.0, 1.0]]) / 2**0.5)
