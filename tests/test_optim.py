import math

import pytest
import torch

from vprompt.optim import MaskedSGD, NormalizedGradient, Schedule, create_optimizer


def test_normalized_step_matches_hand_computed_case():
    # g = (3, 4, 0, 0): ||g|| = 5 over ALL elements, including the masked one; then the mask, then the step.
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    opt = NormalizedGradient([p], lr=10.0, masks={p: mask})
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    opt.step()
    # 1 - 10 * 3/5 = -5 ; masked element untouched
    assert torch.allclose(p.detach(), torch.tensor([-5.0, 1.0, 1.0, 1.0]))


def test_norm_is_global_over_the_group_and_has_no_momentum():
    a = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    opt = NormalizedGradient([a, b], lr=1.0)
    for step in range(1, 3):
        a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
        opt.step()
        assert torch.allclose(a.detach(), torch.tensor([-0.6 * step]))
        assert torch.allclose(b.detach(), torch.tensor([-0.8 * step]))
    assert opt.state_dict()["state"] == {}  # no momentum buffers


def test_masks_stay_out_of_the_state_dict():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = NormalizedGradient([p], lr=1.0, masks={p: torch.ones(3)})
    assert "masks" not in opt.state_dict()["param_groups"][0]


def test_masked_sgd_never_moves_masked_entries():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = MaskedSGD([p], lr=1.0, momentum=0.9, masks={p: torch.tensor([1.0, 1.0, 0.0, 0.0])})
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
    assert torch.allclose(p.detach(), torch.tensor([-5.61, -5.61, 0.0, 0.0]))  # steps of 1, 1.9, 2.71: momentum 0.9


def test_masked_adamw_never_moves_masked_entries():
    # With weight decay, too: the masked entries start at zero and see zero gradients.
    p = torch.nn.Parameter(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    opt = create_optimizer("adamw", [p], lr=0.1, weight_decay=0.1, masks={p: torch.tensor([1.0, 1.0, 0.0, 0.0])})
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
    assert torch.all(p[2:] == 0) and torch.all(p[:2] < 0.5)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_masked_optimizers_mask_gradients_a_closure_computes(name):
    # The closure runs inside step() and rewrites the gradients; the mask must apply to those.
    p = torch.nn.Parameter(torch.zeros(4))
    opt = create_optimizer(name, [p], lr=0.1, masks={p: torch.tensor([1.0, 1.0, 0.0, 0.0])})

    def closure():
        opt.zero_grad()
        loss = (p - 1).pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(4.0)
    assert torch.all(p[2:] == 0) and torch.all(p[:2] > 0)


def test_cosine_per_epoch_schedule():
    s = Schedule("cosine_epoch", total_steps=40, steps_per_epoch=10)
    assert s(0) == 1.0 and s(9) == 1.0
    assert s(10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert s(39) == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))


def test_vp_warmup_then_cosine():
    s = Schedule("cosine", total_steps=110, steps_per_epoch=10, warmup_steps=10)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)
    assert s(110) == pytest.approx(0.0, abs=1e-12)


def test_masked_adamw_decays_its_weights_decoupled():
    from vprompt.optim import MaskedAdamW

    p = torch.nn.Parameter(torch.ones(3))
    opt = MaskedAdamW([p], lr=0.1, weight_decay=0.5, masks={p: torch.ones(3)})
    p.grad = torch.zeros(3)  # no gradient: only the decay moves it, by lr * weight_decay
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.95))


def test_the_scheduler_warms_up_the_optimizers_lr():
    from vprompt.optim import create_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer("sgd", [p], lr=2.0, momentum=0.0)
    sched = create_scheduler(opt, "cosine", total_steps=20, steps_per_epoch=5, warmup_steps=4)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


def test_sgd_applies_the_weight_decay_it_is_given():
    p = torch.nn.Parameter(torch.ones(2))
    opt = create_optimizer("sgd", [p], lr=0.1, momentum=0.0, weight_decay=0.5)
    p.grad = torch.zeros(2)  # no gradient: only the decay moves it, by lr * weight_decay * p
    opt.step()
    assert torch.allclose(p.detach(), torch.full((2,), 0.95))


def test_a_negative_learning_rate_is_refused():
    with pytest.raises(ValueError, match="--lr -0.5 must be non-negative"):
        NormalizedGradient([torch.nn.Parameter(torch.zeros(1))], lr=-0.5)


def test_an_epochs_time_includes_the_work_still_queued_when_its_loop_ends(monkeypatch):
    """On a GPU the loop ends while its last steps still run; the epoch's sums are read after them. Here reading the
    sums takes 0.3 s, as waiting for such steps would: the time, and the images per second, include it."""
    import time

    from torch import nn

    from vprompt import engine
    from vprompt.diversity import create_diversity

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x.mean(dim=(2, 3)))

        def trainable_parameters(self):
            return list(self.parameters())

    def queued(t, world_size):
        time.sleep(0.3)
        return t

    monkeypatch.setattr(engine, "all_reduce_sum", queued)
    model = Model()
    batches = [(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = engine.train_one_epoch(
        model, batches, [optimizer], [], create_diversity("none"), torch.device("cpu"), log_every=0
    )
    assert stats["seconds"] >= 0.3
    assert stats["images_per_s"] <= 4 / 0.3
