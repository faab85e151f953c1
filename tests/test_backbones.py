import pytest
import torch

from vprompt.backbones import OPENAI_CLIP_MEAN, create_backbone
from vprompt.build import PromptedModel
from vprompt.heads import ClipTextHead, build_text_classifier, clean_classname
from vprompt.prompters import create_prompter

from .conftest import TINY_MODEL


def test_backbone_is_frozen_even_after_train(tiny_backbone):
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert tiny_backbone.training  # the wrapper follows, the model does not
    assert not any(m.training for m in tiny_backbone.model.modules())


def test_backbone_applies_its_own_normalization(tiny_backbone):
    assert torch.allclose(tiny_backbone.mean.flatten(), torch.tensor(OPENAI_CLIP_MEAN))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = tiny_backbone.model.encode_image((x - tiny_backbone.mean) / tiny_backbone.std)
        assert torch.allclose(tiny_backbone(x), expected)


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


def test_unknown_pretrained_tag_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        create_backbone(TINY_MODEL, pretrained="openai")


def test_fixed_input_size_is_enforced(tiny_backbone):
    tiny_backbone.check_input_size(64)
    with pytest.raises(ValueError, match="--input-size 96"):
        tiny_backbone.check_input_size(96)
