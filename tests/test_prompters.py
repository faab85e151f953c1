import pytest
import torch

from vprompt.prompters import (
    EVPPrompter,
    FixedPatchPrompter,
    PadPrompter,
    RandomPatchPrompter,
    create_prompter,
    default_inner_size,
    resize_square,
)


def _randomize_border(p: EVPPrompter) -> None:
    with torch.no_grad():
        p.prompt.copy_(torch.rand_like(p.prompt) * p.mask)


def test_evp_geometry_center_is_image_and_border_is_prompt():
    p = EVPPrompter(input_size=40, inner_size=28)
    _randomize_border(p)
    x = torch.rand(2, 3, 28, 28)
    out = p(x)
    assert out.shape == (2, 3, 40, 40)
    assert torch.equal(out[..., 6:34, 6:34], x)
    border = p.mask.expand_as(out).bool()
    assert torch.equal(out[border], p.prompt.expand_as(out)[border])


def test_evp_shrinks_larger_images_first():
    p = EVPPrompter(input_size=40, inner_size=28)
    x = torch.rand(2, 3, 50, 64)
    out = p(x)
    assert torch.allclose(out[..., 6:34, 6:34], resize_square(x, 28))
    assert torch.all(out[..., :6, :] == 0)  # the prompt starts at zero


@pytest.mark.parametrize("size", [48, 20])
def test_resize_square_is_pils_bicubic_both_ways(size):
    """In-memory images are resized on the device as decoded files are by PIL (and the reference code)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    ours = resize_square(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255, size)[0].permute(1, 2, 0)
    assert np.abs(ours.numpy() - pil).mean() < 2 / 255  # 8-bit rounding; another kernel is 4/255 off
    half = resize_square(torch.from_numpy(pixels).permute(2, 0, 1)[None].bfloat16() / 255, size)
    assert half.dtype == torch.bfloat16 and torch.allclose(half[0].permute(1, 2, 0).float(), ours, atol=0.02)


def test_evp_prompt_starts_at_zero_and_mask_is_a_buffer():
    p = EVPPrompter(224, 164)
    assert p.pad == 30
    assert torch.count_nonzero(p.prompt) == 0
    assert "mask" in dict(p.named_buffers())
    assert int(p.mask.sum()) == 224 * 224 - 164 * 164
    assert torch.equal(p.prompt_pixels(), p.prompt[0])


def test_default_inner_size_matches_paper():
    assert default_inner_size(224) == 164
    assert (32 - default_inner_size(32)) % 2 == 0


@pytest.mark.parametrize(("inner", "flag"), [(224, "--inner-size"), (230, "--inner-size"), (163, "even")])
def test_evp_rejects_bad_sizes(inner, flag):
    with pytest.raises(ValueError, match=flag):
        EVPPrompter(224, inner)
    with pytest.raises(ValueError, match=r"--input-size 2 is too small .*: give at least 3"):
        EVPPrompter(2)  # (not an --inner-size the user never gave)
    assert EVPPrompter(3).pad == 1


@pytest.mark.parametrize(("inner", "suggested"), [(163, 162), (1, 2)])
def test_evp_odd_border_suggests_an_inner_size_that_works(inner, suggested):
    with pytest.raises(ValueError, match=f"try --inner-size {suggested}$"):
        EVPPrompter(224, inner)
    assert EVPPrompter(224, suggested).pad == (224 - suggested) // 2  # (0, one below 1, would be refused in turn)


def test_create_prompter_prompt_size_and_conflicts():
    assert create_prompter("evp", 224, prompt_size=30).image_size == 164
    with pytest.raises(ValueError, match="disagree"):
        create_prompter("evp", 224, inner_size=160, prompt_size=30)
    for p in (0, -3, 40):  # named as given, not as the inner size it implies
        with pytest.raises(
            ValueError, match=f"--prompt-size {p} must be positive and less than half of --input-size 64"
        ):
            create_prompter("evp", 64, prompt_size=p)
    with pytest.raises(ValueError, match="did you mean evp"):
        create_prompter("evpp")


def test_pad_prompter_adds_scaled_border_on_top_of_full_image():
    std = (0.5, 0.25, 2.0)
    p = PadPrompter(input_size=32, pad=4, scale=std)
    x = torch.rand(3, 3, 32, 32)
    out = p(x)
    assert torch.equal(out[..., 4:28, 4:28], x[..., 4:28, 4:28])
    expected = x + p.prompt * p.mask * torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(out, expected)
    assert torch.count_nonzero(p.prompt * (1 - p.mask)) == 0  # no learnable center


def test_num_values_counts_only_what_training_can_change():
    # A border of width p on an S x S canvas has S^2 - (S - 2p)^2 pixels, three values each.
    assert EVPPrompter(input_size=64, inner_size=32).num_values() == 3 * (64**2 - 32**2)
    assert PadPrompter(input_size=64, pad=16).num_values() == 3 * (64**2 - 32**2)
    assert FixedPatchPrompter(input_size=32, patch=5).num_values() == 3 * 5 * 5


def test_fixed_patch_touches_only_its_corner():
    p = FixedPatchPrompter(input_size=32, patch=5)
    x = torch.rand(2, 3, 32, 32)
    diff = (p(x) - x).abs().sum(dim=(0, 1))
    assert diff[:5, :5].min() > 0
    diff[:5, :5] = 0
    assert diff.sum() == 0


def test_random_patch_moves_in_training_and_not_in_eval():
    torch.manual_seed(0)
    p = RandomPatchPrompter(input_size=32, patch=4)
    x = torch.zeros(1, 3, 32, 32)
    places = {tuple(torch.nonzero(p(x)[0, 0])[0].tolist()) for _ in range(20)}
    assert len(places) > 1
    small = RandomPatchPrompter(input_size=4, patch=3)  # four places: each corner of the patch's span
    corners = {tuple(torch.nonzero(small(torch.zeros(1, 3, 4, 4))[0, 0])[0].tolist()) for _ in range(100)}
    assert corners == {(0, 0), (0, 1), (1, 0), (1, 1)}
    p.eval()
    assert torch.equal(p(x), p(x))
    out = p(x)
    assert torch.count_nonzero(out[..., :4, :4]) == 3 * 4 * 4  # at the top-left corner...
    out[..., :4, :4] = 0
    assert torch.count_nonzero(out) == 0  # ... and nowhere else


def test_prompters_never_normalize_identity_is_resize_only():
    p = create_prompter("none", 48)
    x = torch.rand(2, 3, 48, 48)
    assert p(x) is x


@pytest.mark.parametrize("name", ["pad", "fixed_patch", "random_patch"])
def test_vp_prompters_need_the_scale_that_makes_them_vp(name):
    with pytest.raises(ValueError, match=r"scale=backbone\.std"):
        create_prompter(name, input_size=32)
    assert torch.equal(create_prompter(name, input_size=32, scale=[0.5]).scale.flatten(), torch.full((3,), 0.5))


@pytest.mark.parametrize("size", [32, 63, 64, 96, 224])
def test_vp_default_border_keeps_the_papers_share_at_every_size(size):
    pad = create_prompter("pad", input_size=size, scale=[1.0]).pad
    assert pad == max(1, round(size * 30 / 224)) and size - 2 * pad >= size * 0.7  # most of the image stays visible


def test_resize_square_keeps_the_center_of_the_longer_side():
    wide = (torch.arange(12.0) / 11).view(1, 1, 1, 12).expand(1, 3, 8, 12)  # a value of its own in each column
    assert torch.allclose(resize_square(wide, 8), wide[..., 2:10], atol=1e-6)
    tall = wide.transpose(-1, -2).contiguous()  # 12 rows of 8
    assert torch.allclose(resize_square(tall, 8), tall[..., 2:10, :], atol=1e-6)


def test_vp_padding_adds_its_prompt_on_the_border_only_whatever_the_prompt_holds():
    p = PadPrompter(16, pad=3, scale=(0.5, 0.25, 2.0))
    with torch.no_grad():
        p.prompt.fill_(1.0)  # as an update that ignored the mask would leave it
    x = torch.rand(2, 3, 16, 16)
    added = p(x) - x
    assert torch.equal(added[..., 3:13, 3:13], torch.zeros(2, 3, 10, 10))
    border = torch.ones(16, 16, dtype=torch.bool)
    border[3:13, 3:13] = False
    assert torch.allclose(
        added[:, :, border], torch.tensor([0.5, 0.25, 2.0])[None, :, None].expand(2, 3, int(border.sum()))
    )


def test_sizes_are_whole_numbers_of_pixels_named_when_not():
    import numpy as np

    evp = create_prompter("evp", input_size=224.0, inner_size=np.int64(164))  # as a YAML file or numpy gives them
    assert evp.geometry() == {"input_size": 224, "inner_size": 164, "prompt_size": 30}
    for key, value in (("inner_size", 164.5), ("input_size", "224"), ("prompt_size", 30.5), ("prompt_size", True)):
        with pytest.raises(ValueError, match=f"{key} {value!r} must be a whole number of pixels"):
            create_prompter("evp", **{key: value})


@pytest.mark.parametrize("optimizer", ["normgrad", "sgd", "adamw"])
def test_the_run_s_optimizer_moves_evp_s_border_and_never_the_image_s_place(optimizer):
    from types import SimpleNamespace

    from vprompt.config import resolve_config
    from vprompt.engine import _optimizers

    prompter = create_prompter("evp", 16, inner_size=8)
    cfg = resolve_config({"method": "evp", "optimizer": optimizer, "lr": 0.5})
    (opt,), _ = _optimizers(cfg, SimpleNamespace(prompter=prompter, head=torch.nn.Identity()), 1)
    prompter(torch.rand(2, 3, 8, 8)).sum().backward()  # a gradient over every pixel, the centre's too
    assert prompter.prompt.grad[..., 4:12, 4:12].abs().sum() > 0
    opt.step()
    assert torch.count_nonzero(prompter.prompt[..., 4:12, 4:12]) == 0
    assert torch.count_nonzero(prompter.prompt) == 3 * (16 * 16 - 8 * 8)


@pytest.mark.parametrize("size", [20, 4])
def test_resize_square_stays_in_pixel_range_where_bicubic_overshoots(size):
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0  # a black-white step: the bicubic kernel rings on both sides of it
    out = resize_square(edge, size)
    assert out.min() == 0.0 and out.max() == 1.0


def test_vp_prompters_save_their_prompt_size_with_the_run():
    assert PadPrompter(32, pad=4).geometry() == {"input_size": 32, "prompt_size": 4}
    for cls in (FixedPatchPrompter, RandomPatchPrompter):
        assert cls(32, patch=5).geometry() == {"input_size": 32, "prompt_size": 5}


def test_the_random_patch_is_pictured_where_it_is_evaluated_and_stays_in_training():
    p = RandomPatchPrompter(input_size=16, patch=4)
    torch.manual_seed(0)
    for _ in range(5):
        pixels = p.prompt_pixels()
        assert torch.equal(pixels[:, :4, :4], p.prompt[0]) and torch.count_nonzero(pixels[:, 4:, :]) == 0
    assert p.training  # picturing it does not switch a training run to evaluation


def test_a_vp_border_must_leave_some_of_the_image():
    with pytest.raises(ValueError, match="--prompt-size 16 must be positive and less than half of --input-size 32"):
        PadPrompter(32, pad=16)
    with pytest.raises(ValueError, match="--prompt-size 16 must be positive and less than half of --input-size 32"):
        create_prompter("evp", 32, prompt_size=16)
