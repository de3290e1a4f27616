"""KTO (Ethayarajh et al., 2024) as TRL computes it: the loss is a free function of log-probs.

For a completion y of prompt x with label desirable/undesirable, with ``r = log pi(y|x) -
log pi_ref(y|x)`` summed over completion tokens and the reference point
``z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))`` estimated on mismatched pairs (x, y') and
never differentiated:

    desirable:    w_d * (1 - sigmoid(beta * (r - z0)))
    undesirable:  w_u * (1 - sigmoid(beta * (z0 - r)))

The loss is the mean over the batch (TRL's ``losses.nanmean()`` over chosen then rejected), the
rewards are ``beta * r``. No collectives here: a data-parallel trainer averages ``z0`` over its
ranks and passes it as ``kl``.
"""

from __future__ import annotations

import torch


def kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """This rank's detached mean log-ratio of the mismatched pairs (average it over DP, then
    clamp at 0)."""
    return (policy_kl_logps - ref_kl_logps).mean().detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, rewards [batch], kl)`` for ``[batch]`` summed completion log-probs and bool labels.

    ``kl``: the reference point already averaged over data-parallel ranks (default: this batch's
    own estimate); it is clamped at 0 and detached either way.
    """
    labels = labels.bool()
    kl = kl_estimate(policy_kl_logps, ref_kl_logps) if kl is None else kl.detach()
    kl = kl.clamp(min=0)
    logratios = policy_logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    return losses.mean(), beta * logratios.detach(), kl
