"""Classifier backbones (timm:, tv:, cifar:): normalization, frozen BatchNorm, features, weights, clear errors."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vprompt.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    create_backbone,
    list_models,
    planned_input_size,
)
from vprompt.build import PromptedModel, build_model
from vprompt.classifiers import ClassifierBackbone
from vprompt.config import resolve_config
from vprompt.heads import LabelMappingHead
from vprompt.prompters import create_prompter

from .conftest import TINY_MODEL, shared_data

RESNETS = shared_data() / "cifar10_resnets"
JPEGS = shared_data() / "cifar10_test_jpeg"
needs_resnets = pytest.mark.skipif(not RESNETS.is_dir(), reason=f"{RESNETS} not available")


@pytest.fixture(scope="module")
def timm_resnet() -> ClassifierBackbone:
    torch.manual_seed(0)
    return create_backbone("timm:test_resnet")


@pytest.fixture(scope="module")
def cifar20() -> ClassifierBackbone:
    torch.manual_seed(0)
    return create_backbone("cifar:resnet20")


def _bn_state(backbone: ClassifierBackbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("fixture", ["timm_resnet", "cifar20"])
def test_training_step_leaves_batchnorm_statistics_and_weights_alone(request, fixture):
    backbone = request.getfixturevalue(fixture)
    before_bn = _bn_state(backbone)
    assert before_bn  # the models do have BatchNorm buffers to protect
    before_w = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    head = LabelMappingHead(4, backbone.num_source_classes, "rlm", seed=0)
    model = PromptedModel(create_prompter("evp", 32), backbone, head)
    model.train()  # what the engine does every epoch; the wrapper must keep BatchNorm in eval mode anyway
    assert not any(m.training for m in backbone.model.modules())
    x = torch.rand(8, 3, 32, 32) * 0.5 + 0.25  # statistics far from BN's running ones, so a drift would show
    loss = F.cross_entropy(model(x), torch.arange(8) % 4)
    loss.backward()
    assert model.prompter.prompt.grad is not None and model.prompter.prompt.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompter.prompt"]
    after = backbone.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before_w.items())
    assert all(torch.equal(after[k], v) for k, v in before_bn.items())


@pytest.mark.parametrize("head", ["rlm", "linear"])
def test_build_model_assembles_the_run_s_prompter_and_head_on_a_given_backbone(cifar20, head):
    settings = {"head": "linear"} if head == "linear" else {"label_map": head}
    cfg = resolve_config({"model": "cifar:resnet20", "method": "evp", "input_size": 40, "inner_size": 24, **settings})
    model = build_model(cfg, ["a", "b", "c"], backbone=cifar20)
    assert model.backbone is cifar20 and model.prompter.image_size == 24
    assert model(torch.rand(2, 3, 24, 24)).shape == (2, 3)
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == (
        ["head.linear.bias", "head.linear.weight", "prompter.prompt"] if head == "linear" else ["prompter.prompt"]
    )


def test_build_model_leaves_the_callers_config_as_it_was(cifar20):
    cfg = resolve_config({"model": "cifar:resnet20", "method": "evp"})
    before = cfg.to_dict()
    model = build_model(cfg, ["a", "b"], backbone=cifar20)
    assert model.prompter.geometry()["input_size"] == 32  # the model's size, in the model
    assert cfg.to_dict() == before and cfg.input_size is None  # not in cfg, which another model can then take


@pytest.mark.parametrize("name", ["cifar:resnet20", "timm:test_resnet", "tv:resnet18", "tv:squeezenet1_1"])
def test_the_classifier_layer_gives_fp32_logits_under_bf16_autocast(name):
    # bf16 logits tie between classes often enough to move accuracy; the final layer runs in fp32, as its input
    # (the penultimate features, computed in bf16) would give it outside autocast.
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained="none")
    x = backbone.normalize(torch.rand(4, 3, 32, 32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, features = backbone.encode(x), backbone.encode_features(x)
    assert logits.dtype == torch.float32 and features.dtype == torch.bfloat16
    if name == "tv:squeezenet1_1":  # its classifier: a 1x1 convolution over the feature map, ReLU, then pooling
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            feature_map = backbone.model.features(x)
        expected = backbone.model.classifier.forward(feature_map.float()).flatten(1)
    else:
        layer = backbone.model.linear if name.startswith("cifar") else backbone.model.fc
        expected = F.linear(features.float(), layer.weight, layer.bias)
    assert torch.equal(logits, expected)
    with torch.no_grad():  # outside autocast nothing changes
        assert backbone.encode(x).dtype == torch.float32


def test_timm_backbone_uses_the_models_own_data_config(timm_resnet):
    cfg = timm_resnet.model.pretrained_cfg
    assert timm_resnet.kind == "classifier" and timm_resnet.name == "timm:test_resnet"
    assert torch.allclose(timm_resnet.mean.flatten(), torch.tensor(cfg["mean"]))
    assert torch.allclose(timm_resnet.std.flatten(), torch.tensor(cfg["std"]))
    assert not torch.allclose(timm_resnet.mean.flatten(), torch.tensor(OPENAI_CLIP_MEAN))
    assert (timm_resnet.input_size, timm_resnet.fixed_input_size) == (160, False)
    assert timm_resnet.num_source_classes == 1000 and timm_resnet.source_classnames[:2] == ["tench", "goldfish"]
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        logits = timm_resnet(x)
        assert torch.allclose(logits, timm_resnet.model((x - timm_resnet.mean) / timm_resnet.std))
        feats = timm_resnet.features(x)
        # Penultimate features are what the classifier layer reads: fc(features) gives the logits back.
        assert feats.shape == (2, timm_resnet.model.num_features)
        assert torch.allclose(timm_resnet.model.fc(feats), logits, atol=1e-5)


def test_timm_vit_has_a_fixed_input_size():
    vit = create_backbone("timm:test_vit")
    assert vit.fixed_input_size and vit.input_size == 160
    with pytest.raises(ValueError, match="input size 32 .* does not fit model 'timm:test_vit'"):
        vit.check_input_size(32)
    with torch.no_grad():
        assert vit.features(torch.rand(1, 3, 160, 160)).shape == (1, vit.model.num_features)


def test_torchvision_backbone_with_imagenet_normalization_and_local_weights(tmp_path):
    torch.manual_seed(0)
    tv = create_backbone("tv:resnet18")
    assert tv.name == "tv:resnet18" and tv.num_source_classes == 1000
    assert torch.allclose(tv.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(tv.std.flatten(), torch.tensor(IMAGENET_STD))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats, logits = tv.features(x), tv(x)
    assert feats.shape == (2, 512) and torch.allclose(tv.model.fc(feats), logits, atol=1e-5)

    # A local state dict (DataParallel prefix and all) loads with weights_only and reproduces the model exactly.
    state = {"state_dict": {f"module.{k}": v for k, v in tv.model.state_dict().items()}}
    torch.save(state, tmp_path / "r18.pth")
    again = create_backbone("tv:resnet18", pretrained=str(tmp_path / "r18.pth"))
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    torch.save({"fc.weight": torch.zeros(1000, 100)}, tmp_path / "bad.pth")  # (features of another model)
    with pytest.raises(ValueError, match="does not match model tv:resnet18") as info:
        create_backbone("tv:resnet18", pretrained=str(tmp_path / "bad.pth"))
    # one short line: how many keys differ, the first few named (PyTorch lists all 100 or so)
    missing = [k for k in tv.model.state_dict() if k != "fc.weight" and not k.endswith("num_batches_tracked")]
    assert f": {len(missing)} missing ({', '.join(missing[:3])}, ...); 1 of another shape (fc.weight: " in str(
        info.value
    )
    assert len(str(info.value)) < 400


@pytest.mark.filterwarnings("error::FutureWarning")  # torchvision's warning about its slow init, which is skipped
@pytest.mark.parametrize("aux_logits", [True, False])  # the published file; a state dict of the model it builds
def test_googlenet_from_a_local_file_converts_to_the_statistics_its_weights_were_trained_with(tmp_path, aux_logits):
    import torchvision.models as tvm

    torch.manual_seed(0)
    reference = tvm.GoogLeNet(transform_input=True, aux_logits=aux_logits, init_weights=True).eval()
    torch.save(reference.state_dict(), tmp_path / "googlenet.pth")
    loaded = create_backbone("tv:googlenet", pretrained=str(tmp_path / "googlenet.pth"))
    assert torch.allclose(loaded.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    seen = []  # what the first convolution receives (random-init logits are near constant, so compare this)
    for model in (loaded.model, reference):
        model.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        loaded(x), reference(loaded.normalize(x))
    assert torch.allclose(seen[0], seen[1], atol=1e-6)
    assert loaded.model.aux1 is None and not loaded.model.aux_logits  # as torchvision's builder drops them


def test_a_torchvision_weights_file_gets_the_size_of_the_models_own_weights(tmp_path):
    import torchvision.models as tvm

    torch.save(tvm.get_model("efficientnet_b3").state_dict(), tmp_path / "b3.pth")
    from_file = create_backbone("tv:efficientnet_b3", pretrained=str(tmp_path / "b3.pth"))
    random_init = create_backbone("tv:efficientnet_b3", pretrained="none")
    assert from_file.input_size == random_init.input_size == 300  # as with --pretrained default, not 224
    assert from_file.source_classnames[0] == "tench"
    # Before it is built: the weights named tell (a file or random weights: only the built model)
    assert planned_input_size("tv:efficientnet_b3", "default") == (300, False)
    assert planned_input_size("tv:vit_b_16", "IMAGENET1K_SWAG_E2E_V1") == (384, True)
    assert planned_input_size("tv:efficientnet_b3", str(tmp_path / "b3.pth")) is None
    assert planned_input_size("tv:efficientnet_b3", "none") is None


@pytest.mark.parametrize("name", ["cifar:resnet20", "timm:test_vit", "timm:test_efficientnet", TINY_MODEL])
def test_a_models_input_size_is_known_before_it_is_built(name):
    backbone = create_backbone(name, pretrained="none")
    assert planned_input_size(name) == (backbone.input_size, backbone.fixed_input_size)


def test_a_torchvision_vit_keeps_the_one_size_it_was_built_for(monkeypatch):
    import torchvision.models as tvm

    from vprompt import classifiers

    # As tv:vit_h_14, whose default weights take 518 pixels while the model built without them takes 224.
    swag = tvm.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    monkeypatch.setattr(classifiers, "_default_tv_weights", lambda name: swag)
    vit = create_backbone("tv:vit_b_16", pretrained="none")
    assert swag.transforms().crop_size[0] == 384 and vit.input_size == vit.model.image_size == 224


def test_a_torchvision_vit_file_is_built_for_the_size_its_weights_were_trained_at(tmp_path, monkeypatch):
    import torchvision.models as tvm

    def small_vit(name, weights=None, image_size=224, **kwargs):  # vit_b_16's shape, at a test's size
        return tvm.VisionTransformer(image_size, 16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, **kwargs)

    monkeypatch.setattr(tvm, "get_model", small_vit)
    torch.save(small_vit("vit_b_16", image_size=384).state_dict(), tmp_path / "swag.pth")  # as SWAG's E2E weights
    vit = create_backbone("tv:vit_b_16", pretrained=str(tmp_path / "swag.pth"))
    assert vit.input_size == vit.model.image_size == 384 and vit.fixed_input_size


def test_squeezenet_without_a_linear_classifier_builds_and_gives_pooled_features():
    torch.manual_seed(0)
    squeeze = create_backbone("tv:squeezenet1_1", pretrained="none")
    assert squeeze.num_source_classes == 1000
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        feats, logits = squeeze.features(x), squeeze(x)
    assert feats.shape == (2, 512) and logits.shape == (2, 1000)


def test_the_classifier_sources_import_in_any_order():
    # vprompt's own imports are lazy, so these are the two orders: vprompt.classifiers first, vprompt.backbones first
    firsts = ("from vprompt import ClassifierBackbone", "from vprompt.backbones import ClassifierBackbone")
    check = "from vprompt.backbones import list_models\nassert {'cifar', 'timm', 'tv'} <= set(list_models())"
    procs = {
        first: subprocess.Popen([sys.executable, "-c", f"{first}\n{check}"], stderr=subprocess.PIPE, text=True)
        for first in firsts
    }  # side by side: each spends its time importing torch
    for first, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{first}: {err}"


def test_timm_local_weights_file_and_folder(tmp_path, timm_resnet):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in timm_resnet.model.state_dict().items()}, tmp_path / "model.safetensors")
    for pretrained in (tmp_path / "model.safetensors", tmp_path):  # a file, or a Hugging Face snapshot folder
        loaded = create_backbone("timm:test_resnet", pretrained=str(pretrained))
        assert torch.equal(loaded.model.fc.weight, timm_resnet.model.fc.weight)


@pytest.mark.parametrize(
    ("model", "layer"),
    [
        ("timm:test_resnet", "fc"),
        ("tv:resnet18", "fc"),
        ("tv:squeezenet1_0", "classifier.1"),
        ("cifar:resnet20", "linear"),
    ],
)
def test_a_users_own_weights_with_another_number_of_classes_load(tmp_path, model, layer):
    torch.manual_seed(0)
    own = create_backbone(model).model  # random weights, fine-tuned (say) to 7 classes
    old = own.get_submodule(layer)
    new = torch.nn.Linear(old.in_features, 7) if isinstance(old, torch.nn.Linear) else torch.nn.Conv2d(512, 7, 1)
    own.set_submodule(layer, new)
    path = tmp_path / "finetuned_7.pth"  # (a name of its own: a CIFAR ResNet of a published name is checked)
    torch.save({"state_dict": own.state_dict()} if model.startswith("cifar") else own.state_dict(), path)
    loaded = create_backbone(model, pretrained=str(path))
    assert loaded.num_source_classes == 7 and loaded.source_classnames is None
    if not model.startswith("timm:"):  # (timm's models name their own; no published weights describe these)
        assert loaded.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
        assert loaded.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert torch.equal(loaded.model.get_submodule(layer).weight, new.weight)
    with torch.no_grad():
        assert loaded(torch.rand(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("content", [b"lr 0.1 worked best\n", bytes(range(256)) * 20])
def test_an_unreadable_weights_file_of_a_name_of_its_own_is_one_line_without_unsafe_advice(tmp_path, content):
    path = tmp_path / "my_resnet.th"
    path.write_bytes(content)
    for model in ("cifar:resnet20", "tv:resnet18"):
        with pytest.raises(ValueError, match="not a PyTorch checkpoint that torch.load.weights_only=True. reads") as e:
            create_backbone(model, pretrained=str(path))
        assert str(path) in str(e.value) and "weights_only` set to `False`" not in str(e.value)


@needs_resnets
def test_cifar_backbone_loads_the_real_checkpoint():
    backbone = create_backbone("cifar:resnet20", pretrained=str(RESNETS))
    assert backbone.kind == "classifier" and backbone.num_source_classes == 10
    assert backbone.source_classnames == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                          "ship", "truck"]  # fmt: skip
    assert torch.allclose(backbone.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert (backbone.input_size, backbone.fixed_input_size) == (32, False)
    backbone.check_input_size(64)  # any canvas size S is allowed
    with torch.no_grad():
        assert backbone.features(torch.rand(2, 3, 40, 40)).shape == (2, 64)


def test_random_weights_are_announced(caplog):
    with caplog.at_level(logging.WARNING):
        create_backbone("cifar:resnet32")
    assert "RANDOM weights" in caplog.text


@pytest.mark.parametrize(
    ("name", "pretrained", "needle"),
    [
        ("timm:resnet5O", None, "unknown --model 'timm:resnet5O'; did you mean timm:resnet50"),
        ("timm:resnet50.nosuchtag", None, "unknown --model 'timm:resnet50.nosuchtag'"),
        ("tv:resnet19", None, "unknown --model 'tv:resnet19'; did you mean tv:resnet18"),
        ("cifar:resnet21", None, "unknown --model 'cifar:resnet21'; did you mean cifar:resnet32, cifar:resnet20"),
        ("tv:resnet18", "IMAGENET1K_V9", "weights: DEFAULT, IMAGENET1K_V1, none"),
        ("tv:ResNet19", None, "did you mean tv:resnet18"),  # (case aside)
        ("resnet50", None, "another source has that name: --model timm:resnet50, --model tv:resnet50"),
        ("vit_b_32", None, "(`vprompt list models` shows them); another source has that name: --model tv:vit_b_32"),
    ],
)
def test_unknown_names_fail_with_close_matches(name, pretrained, needle):
    with pytest.raises(ValueError) as info:
        create_backbone(name, pretrained=pretrained)
    assert needle in str(info.value)


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """torch's hub cache in a temporary folder: its ``checkpoints`` folder, where torchvision's weights go."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_default_names_the_weights_even_beside_a_folder_called_default(tmp_path, monkeypatch, torch_cache):
    import torchvision.models as tvm

    asked = []

    def download(url, dst, hash_prefix=None, *args, **kwargs):  # records what would be downloaded, and stops there
        asked.append((url, Path(dst).parent, hash_prefix))
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(KeyboardInterrupt):
        create_backbone("tv:resnet18", pretrained="default")
    # torchvision's weights, not the folder, into torch's cache, checked against the digest prefix in their name
    assert asked == [(tvm.ResNet18_Weights.DEFAULT.url, torch_cache, "f37072fd")]


def test_torchvision_weights_are_read_from_the_cache_without_running_pickled_code(tmp_path, monkeypatch, torch_cache):
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("the cached file is there"))
    cached = torch_cache / Path(tvm.ResNet18_Weights.DEFAULT.url).name
    cached.parent.mkdir(parents=True)
    published = tvm.resnet18().state_dict()
    torch.save(published, cached)
    backbone = create_backbone("tv:resnet18", pretrained="IMAGENET1K_V1")
    assert all(torch.equal(v, published[k]) for k, v in backbone.model.state_dict().items())
    assert backbone.input_size == 224 and backbone.source_classnames[0] == "tench"  # the weights' metadata
    # a file that would run code when unpickled (torchvision's own loader reads it so) is refused, naming it
    torch.save({"fc.weight": _RunsCode(str(tmp_path / "ran"))}, cached)
    with pytest.raises(ValueError, match=f"{cached}: not a PyTorch checkpoint .*delete it to download it again"):
        create_backbone("tv:resnet18", pretrained="default")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["densenet121", "mnasnet0_5"])
def test_published_weights_that_torchvisions_builder_converts_are_converted_alike(name, monkeypatch, torch_cache):
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("the cached file is there"))
    published = tvm.get_model(name).state_dict()  # (MNASNet's records its modules' versions, which it reads)
    if name.startswith("densenet"):  # the published files' names of a layer's parts: norm.1.weight for norm1.weight
        published = OrderedDict(  # (saved before BatchNorm counted its batches, and with no module versions)
            (re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k), v)
            for k, v in published.items()
            if not k.endswith("num_batches_tracked")
        )
        assert "features.denseblock1.denselayer1.norm.1.weight" in published
    url = tvm.get_model_weights(name).DEFAULT.url
    torch_cache.mkdir(parents=True)
    torch.save(published, torch_cache / Path(url).name)
    with torch.no_grad():
        theirs = tvm.get_model(name, weights="DEFAULT").eval()  # torchvision's builder, on the same cached file
        ours = create_backbone(f"tv:{name}", pretrained="default")
        x = torch.rand(2, 3, 64, 64)
        assert torch.equal(ours.encode(ours.normalize(x)), theirs(ours.normalize(x)))


class _RunsCode:
    """An object whose unpickling writes a file: what ``weights_only=True`` must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_missing_local_weights_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint-like files"):
        create_backbone("cifar:resnet20", pretrained=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="folder has no model.safetensors"):
        create_backbone("timm:test_resnet", pretrained=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tag goes in the name: --model timm:<arch>.<tag>"):
        create_backbone("timm:test_resnet", pretrained="r160_in1k")


def test_sources_are_listed():
    models = list_models()
    assert models["cifar"] == ["cifar:resnet20", "cifar:resnet32", "cifar:resnet44", "cifar:resnet56"]
    assert "tv:resnet50" in models["tv"] and "timm:resnext101_32x8d.fb_wsl_ig1b_ft_in1k" in models["timm"]


@needs_resnets
@pytest.mark.skipif(not (JPEGS / "test").is_dir(), reason=f"{JPEGS} not available")
@pytest.mark.slow
def test_resnet20_through_backbone_and_imagefolder_and_flm_recovers_the_identity_map():
    """The real path end to end: imagefolder decode -> identity prompter -> cifar:resnet20 (its own normalization).

    Every 10th test JPEG (1,000 images) keeps this fast; ResNet-20 scores ~81 % on them, and FLM computed from its
    predictions must map every CIFAR-10 class to itself."""
    from vprompt.data import build_transform, create_dataset, make_loader, subset

    torch.set_num_threads(2)
    ds = create_dataset("imagefolder", JPEGS, "test", transform=build_transform(32))
    ds = subset(ds, range(0, len(ds), 10))
    backbone = create_backbone("cifar:resnet20", pretrained=str(RESNETS))
    assert ds.classnames == backbone.source_classnames
    prompter = create_prompter("none", 32)
    outs, labels = [], []
    with torch.no_grad():
        for images, y in make_loader(ds, 200, False, workers=0):
            outs.append(backbone(prompter(images.float() / 255)))
            labels.append(y)
    logits, y = torch.cat(outs), torch.cat(labels)
    assert (logits.argmax(-1) == y).float().mean() >= 0.78
    head = LabelMappingHead(10, 10, "flm", classnames=ds.classnames, source_classnames=backbone.source_classnames)
    assert head.epoch_start(0, lambda: (logits.argmax(-1), y))
    assert head.mapping.tolist() == list(range(10))


def test_offline_weight_downloads_are_one_line(monkeypatch, torch_cache):
    import open_clip
    import torchvision.models as tvm

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def open_clip_offline(*args, **kwargs):  # what open_clip raises after its own retries
        raise RuntimeError("Failed to download weights for tag 'openai': Failed to download file")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(open_clip, "create_model", open_clip_offline)
    for model, tag in (("tv:resnet18", "default"), ("ViT-B-32", "openai")):
        with pytest.raises(
            FileNotFoundError, match=f"weights of --model {model} --pretrained {tag} .*--pretrained PATH"
        ):
            create_backbone(model, pretrained=tag)
    # a corrupt cached file is not a download failure: it is named, with the fix
    torch_cache.mkdir(parents=True, exist_ok=True)
    (torch_cache / Path(tvm.ResNet18_Weights.DEFAULT.url).name).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth: not a PyTorch .*delete it to download it again"):
        create_backbone("tv:resnet18", pretrained="default")


def test_an_offline_hub_download_names_the_quick_way_to_fail_and_cuts_its_reason_at_a_word(monkeypatch):
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    reason = "An error happened while trying to locate the file on the Hub and we cannot find it in the cache " * 5
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: (_ for _ in ()).throw(LocalEntryNotFoundError(reason)))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # (the hub's host resolves: the hub retries)
    with pytest.raises(FileNotFoundError) as info:
        create_backbone("timm:test_resnet", pretrained="default")
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1 has the Hugging Face Hub fail at once instead of retrying" in message
    cut = message.split("(", 1)[1].split(" ...)", 1)[0]  # the reason, cut short at the end of a word
    assert reason.startswith(cut) and reason[len(cut)] == " " and len(cut) <= 300
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # (already set: nothing to suggest)
    with pytest.raises(FileNotFoundError) as info:
        create_backbone("timm:test_resnet", pretrained="default")
    assert "HF_HUB_OFFLINE" not in str(info.value)


def test_an_offline_timm_hub_model_points_to_its_architecture_name_not_to_a_weights_file(tmp_path, monkeypatch):
    """Its config comes from the Hub with any --pretrained: a local weights file, which the message suggested,
    fails in the same way, and random weights were told as --pretrained None."""
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, weights)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: (_ for _ in ()).throw(LocalEntryNotFoundError("x")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for pretrained, what in ((None, "config"), (str(weights), "config"), ("default", "config and weights")):
        with pytest.raises(FileNotFoundError) as info:
            create_backbone("timm:hf-hub:timm/test_resnet.r160_in1k", pretrained=pretrained)
        message = str(info.value)
        assert message.startswith(f"could not get the {what} of --model timm:hf-hub:timm/test_resnet.r160_in1k (")
        assert "--model timm:test_resnet.r160_in1k, with --pretrained PATH" in message
        assert "--pretrained None" not in message and "if you are offline, pass --pretrained PATH" not in message


def test_where_the_hub_cannot_be_resolved_it_reads_its_cache_at_once_and_fails_at_once(tmp_path, monkeypatch):
    """Offline, the hub retried each file for about 50 s before it read its cache or failed."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import _http

    from vprompt.download import fetching_weights

    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def no_retry(seconds):
        raise AssertionError(f"the hub waits {seconds} s to retry")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr(_http.time, "sleep", no_retry)
    repo = tmp_path / "models--org--clip"  # a file in the hub's cache, as a download leaves it
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "weights.bin").write_bytes(b"w")
    with fetching_weights("--model org/clip", hub=True):
        found = hf_hub_download("org/clip", "weights.bin", cache_dir=tmp_path)
    assert Path(found).read_bytes() == b"w" and not constants.HF_HUB_OFFLINE  # (offline only while in there)
    with pytest.raises(FileNotFoundError, match=r"huggingface.co cannot be resolved: no network\)$") as info:
        with fetching_weights("--model org/clip", hub=True):
            hf_hub_download("org/clip", "other.bin", cache_dir=tmp_path)
    assert "--model org/clip" in str(info.value) and "HF_HUB_OFFLINE=1" not in str(info.value)
    assert not constants.HF_HUB_OFFLINE
    # a hub before 1.0 keeps offline mode in the sessions it made meanwhile: they are dropped on the way in and out
    from huggingface_hub import utils

    modes = []
    monkeypatch.setattr(utils, "reset_sessions", lambda: modes.append(constants.HF_HUB_OFFLINE), raising=False)
    with fetching_weights("--model org/clip", hub=True):
        hf_hub_download("org/clip", "weights.bin", cache_dir=tmp_path)
    assert modes == [True, False]
    # a download from elsewhere (torchvision's, the CIFAR ResNets') is not told of the hub's host
    with pytest.raises(FileNotFoundError) as info:
        with fetching_weights("--model tv:resnet18 --pretrained default"):
            raise urllib.error.URLError("[Errno -2] Name or service not known")
    assert "huggingface" not in str(info.value)
