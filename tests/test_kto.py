"""kto_loss against the KTO formula written out independently (TRL's, element by element)."""

from __future__ import annotations

import math

import pytest
import torch

from motif_megatron.posttrain.kto import kto_loss


def reference(policy, ref, policy_kl, ref_kl, labels, beta, wd, wu):
    """TRL's ``_compute_loss`` arithmetic on Python floats: chosen losses, then rejected ones."""
    kl = max(0.0, sum(p - r for p, r in zip(policy_kl, ref_kl, strict=True)) / len(policy_kl))

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    chosen = [
        wd * (1 - sigmoid(beta * ((p - r) - kl)))
        for p, r, y in zip(policy, ref, labels, strict=True)
        if y
    ]
    rejected = [
        wu * (1 - sigmoid(beta * (kl - (p - r))))
        for p, r, y in zip(policy, ref, labels, strict=True)
        if not y
    ]
    losses = chosen + rejected
    return sum(losses) / len(losses), [beta * (p - r) for p, r in zip(policy, ref, strict=True)], kl


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("beta", "wd", "wu"), [(0.1, 1.0, 1.0), (0.5, 1.33, 0.75)])
def test_matches_the_formula(seed, beta, wd, wu):
    g = torch.Generator().manual_seed(seed)
    n = 9
    policy, ref = (
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
    )
    policy_kl, ref_kl = (
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
    )
    labels = torch.rand(n, generator=g) > 0.4
    loss, rewards, kl = kto_loss(policy, ref, policy_kl, ref_kl, labels, beta, wd, wu)
    want_loss, want_rewards, want_kl = reference(
        policy.tolist(),
        ref.tolist(),
        policy_kl.tolist(),
        ref_kl.tolist(),
        labels.tolist(),
        beta,
        wd,
        wu,
    )
    assert loss.item() == pytest.approx(want_loss, rel=1e-12)
    assert rewards.tolist() == pytest.approx(want_rewards, rel=1e-12)
    assert kl.item() == pytest.approx(want_kl, abs=1e-12)
    assert loss.dim() == 0 and rewards.shape == (n,) and kl.dim() == 0


def test_kl_is_clamped_and_carries_no_gradient():
    policy = torch.tensor([-5.0, -6.0], requires_grad=True)
    policy_kl = torch.tensor([-9.0, -9.0], requires_grad=True)
    loss, _, kl = kto_loss(
        policy,
        torch.tensor([-5.5, -5.0]),
        policy_kl,
        torch.tensor([-1.0, -1.0]),
        torch.tensor([True, False]),
    )
    assert kl.item() == 0.0  # mean log-ratio -8 clamps to 0
    loss.backward()
    assert policy.grad is not None and policy_kl.grad is None
    # hand value: r = [0.5, -1.0], z0 = 0, beta 0.1
    want = ((1 - 1 / (1 + math.exp(-0.05))) + (1 - 1 / (1 + math.exp(-0.1)))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_a_given_data_parallel_kl_is_used():
    args = (
        torch.tensor([-3.0]),
        torch.tensor([-4.0]),
        torch.tensor([-2.0]),
        torch.tensor([-2.0]),
        torch.tensor([True]),
    )
    _, _, own = kto_loss(*args)
    loss, _, kl = kto_loss(*args, kl=torch.tensor(0.7))
    assert own.item() == 0.0 and kl.item() == pytest.approx(0.7)
    assert loss.item() == pytest.approx(1 - 1 / (1 + math.exp(-0.1 * (1.0 - 0.7))), rel=1e-6)
