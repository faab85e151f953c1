import pytest
import torch

from vprompt.diversity import create_diversity, random_resize_pad


def test_ref_flips_each_image_or_leaves_it():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = create_diversity("ref")(x)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | flipped)
    assert 10 < int(flipped.sum()) < 54


def test_di_resizes_and_pads_some_images():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 16, 16) * 0.5 + 0.5  # no black pixel in the input
    out = random_resize_pad(x, min_scale=0.6, prob=1.0)
    assert out.shape == x.shape
    assert (out != x).flatten(1).any(1).all()  # every image moved
    assert (out == 0).flatten(1).any(1).float().mean() > 0.5  # most show black canvas
    assert out.mean() < x.mean() - 0.05  # darker on the whole: black padding came in
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(random_resize_pad(x, min_scale=0.6, prob=0.0), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_di_samples_half_precision_batches_where_float32_does(dtype):
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    ref = random_resize_pad(x, min_scale=0.6, prob=1.0)
    torch.manual_seed(1)  # the same draws, on the same pixels in half precision
    out = random_resize_pad(x.to(dtype), min_scale=0.6, prob=1.0)
    assert out.dtype == dtype and (out.float() - ref).abs().max() < 0.01  # rounding only, not misplaced pixels


def test_di_never_flips():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = create_diversity("di", prob=0.0)(x)  # no resize: any change would be a flip
    assert torch.equal(out, x)


def test_none_is_identity_and_bad_names_fail():
    x = torch.rand(2, 3, 4, 4)
    assert create_diversity("none")(x) is x
    assert not create_diversity("none").random_crop
    with pytest.raises(ValueError, match="--diversity"):
        create_diversity("flip")


@pytest.mark.parametrize("name", ["ref", "di"])
def test_processes_draw_for_their_share_what_one_process_draws(name):
    x = torch.rand(12, 3, 8, 8)
    torch.manual_seed(3)
    whole = create_diversity(name, prob=0.7)(x)
    for rank in range(3):  # each of 3 processes holds every 3rd image of the batch, from its rank
        torch.manual_seed(3)  # as the engine seeds every process alike
        share = create_diversity(name, prob=0.7, shard=(rank, 3))(x[rank::3])
        assert torch.allclose(share, whole[rank::3])


def test_ref_flips_half_of_a_large_batch():
    x = (torch.arange(8.0) / 7).view(1, 1, 1, 8).expand(4096, 3, 4, 8)  # columns in increasing order
    torch.manual_seed(0)
    out = create_diversity("ref")(x)
    flipped = int((out[:, 0, 0, 0] == 1).sum())
    assert 0.45 * 4096 < flipped < 0.55 * 4096 and torch.equal(out[out[:, 0, 0, 0] == 1], x[:flipped].flip(-1))


def test_di_shrinks_by_no_more_than_min_scale():
    torch.manual_seed(0)
    out = random_resize_pad(torch.ones(64, 3, 100, 100), min_scale=0.9, prob=1.0)
    widths = (out[:, 0, 50, :] > 0.5).sum(-1)  # the shrunk image's width along its middle row
    assert int(widths.min()) >= 88 and int(widths.max()) <= 100 and int(widths.min()) < 98  # some do shrink


def test_di_places_the_shrunk_image_anywhere_on_the_canvas():
    torch.manual_seed(0)
    out = random_resize_pad(torch.ones(64, 3, 100, 100), min_scale=0.6, prob=1.0)
    row = out[:, 0, 50, :] > 0.5  # the shrunk image along its middle row
    left = row.float().argmax(-1)
    right = 99 - row.flip(-1).float().argmax(-1)
    margins = (left - (99 - right)).abs()  # 0 where it is centred
    assert int(margins.max()) > 10 and len(set(left.tolist())) > 10


def test_di_moves_the_shrunk_image_to_either_side_of_the_centre():
    torch.manual_seed(0)
    out = random_resize_pad(torch.ones(64, 3, 100, 100), min_scale=0.6, prob=1.0)
    row = out[:, 0, 50, :] > 0.5
    left = row.float().argmax(-1)
    right = 99 - row.flip(-1).float().argmax(-1)
    offset = (left + right - 99) / 2  # the image's centre from the canvas's
    assert int((offset < -5).sum()) > 10 and int((offset > 5).sum()) > 10


def test_di_and_ref_crop_randomly_when_images_are_decoded():
    # METHOD step 1: a random crop in training; only --diversity none takes the centre
    assert create_diversity("ref").random_crop and create_diversity("di").random_crop


def test_di_takes_its_smallest_scale_from_the_run():
    torch.manual_seed(0)
    out = create_diversity("di", min_scale=0.5, prob=1.0)(torch.ones(64, 3, 100, 100))
    widths = (out[:, 0, 50, :] > 0.5).sum(-1)
    assert int(widths.min()) < 70 and int(widths.min()) >= 48  # below 0.9's 90 pixels, never below half


def test_flip_probability_is_honoured():
    from vprompt.diversity import random_flip

    x = torch.rand(16, 3, 4, 4)
    assert torch.equal(random_flip(x, prob=0.0), x)
    assert torch.equal(random_flip(x, prob=1.0), x.flip(-1))
