"""``moe``: video-level mixture of experts, as in YouTube-8M's ``MoeModel``.

For each class c, a softmax gate over ``num_experts + 1`` experts mixes per-expert sigmoid
probabilities; the extra "dummy" expert always says 0, which lets the gate express "not this
class" cheaply:

    p_c     = sum_e g_{c,e} * sigmoid(z_{c,e})
    1 - p_c = g_{c,dummy} + sum_e g_{c,e} * sigmoid(-z_{c,e})

The head returns ``logit(p_c) = log p_c - log(1 - p_c)``, each term computed with logsumexp in
log space, so no clamping is needed. Hence:
  * multi-label: BCE-with-logits on the output is exactly the YouTube-8M cross-entropy on p_c,
    and ``sigmoid(output)`` recovers p_c;
  * single-label: softmax cross-entropy on the output trains a softmax over logit(p_c), whose
    class ranking is the ranking of p_c (logit is monotonic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.models.base import CLASSIFIERS, HEADS, Head, HeadConfig, masked_mean


class MixtureOfExperts(nn.Module):
    """(B, F) -> (B, C) logits of a per-class gated mixture of sigmoid experts."""

    def __init__(self, in_features: int, num_classes: int, num_experts: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = num_classes
        self.num_experts = num_experts
        self.gates = nn.Linear(in_features, num_classes * (num_experts + 1))
        self.experts = nn.Linear(in_features, num_classes * num_experts)

    def forward(self, v: Tensor) -> Tensor:
        batch, experts = v.shape[0], self.num_experts
        log_gate = F.log_softmax(self.gates(v).view(batch, -1, experts + 1), dim=-1)
        z = self.experts(v).view(batch, -1, experts)  # (B, C, E)
        log_gate_real, log_gate_dummy = log_gate[..., :experts], log_gate[..., experts:]
        log_p = torch.logsumexp(log_gate_real + F.logsigmoid(z), dim=-1)
        log_not_p = torch.logsumexp(
            torch.cat([log_gate_dummy, log_gate_real + F.logsigmoid(-z)], dim=-1), dim=-1
        )
        return log_p - log_not_p  # (B, C)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, num_experts={self.num_experts}"


@CLASSIFIERS.register("moe")
def moe_classifier(in_features: int, num_classes: int, cfg: HeadConfig) -> MixtureOfExperts:
    return MixtureOfExperts(in_features, num_classes, cfg.num_experts)


class MoeHead(Head):
    """Masked mean over valid frames -> mixture of experts. Order-blind by construction."""

    order_invariant = True  # pools frames before anything else sees them
    video_level = True  # the mean of a video's frames is its video-level vector

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__(input_dim, num_classes, cfg)
        self.top = nn.Identity()  # the experts read the mean feature directly
        self.fc = self.make_classifier(input_dim, num_classes)

    def make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        return moe_classifier(in_features, num_classes, self.cfg)  # whatever cfg.classifier says

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        return masked_mean(x, lengths)  # (B, D)


@HEADS.register("moe")
def moe(input_dim: int, num_classes: int, cfg: HeadConfig) -> MoeHead:
    return MoeHead(input_dim, num_classes, cfg)
