"""``lstm_moe``: LSTM_1 -> sparsely gated mixture-of-experts layer -> LSTM_2 (Akopyan & Khashba).

The layer is the one of Shazeer et al. (2017), applied to every valid time step on its own:

    H(x)_i = x W_g,i + N(0, 1) * softplus(x W_noise,i)      (noise only while training)
    G(x)   = softmax(KeepTopK(H(x), k))                       (0 outside the top k)
    y      = sum_{i in top k} G(x)_i E_i(x)                   (only the chosen experts run)

Each expert E_i is two FC layers of ``expert_size`` units (Linear -> ReLU -> Linear). Two
losses keep the gate from always choosing the same experts, both over the steps of a batch:

    importance loss = w_importance * CV(sum_x G(x))^2
    load loss       = w_load * CV(sum_x P(x))^2

where P(x)_i is the probability that expert i is in the top k under a fresh draw of its own
noise, the others' kept (a smooth stand-in for the count of steps sent to i). The gate
matrices start at zero, as in the paper, so the first batches are routed by the noise alone.
Padded steps never reach the layer: they are neither routed nor counted.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.models.base import HEADS, AuxLossModule, HeadConfig, lengths_to_mask
from heads.models.recurrent import RecurrentHead, _init_forget_bias, run_packed

_NOISE_FLOOR = 1e-2  # keeps the noise scale, hence P(x), away from a division by zero


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation var / mean^2 of a (E,) vector (0 for one value)."""
    values = values.float()
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var(unbiased=False) / (values.mean() ** 2 + 1e-10)


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


class SparseMoE(AuxLossModule):
    """(N, F_in) -> (N, F_out): noisy top-k gating over ``num_experts`` two-layer experts."""

    # An expert no step is routed to in a batch takes no part in that step's graph, so its
    # parameters get no gradient: DistributedDataParallel must look for them (distributed.py).
    skips_parameters: ClassVar[bool] = True

    def __init__(self, in_features: int, out_features: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.num_experts, self.top_k = cfg.moe_experts, cfg.moe_top_k
        self.out_features = out_features
        self.importance_weight = cfg.moe_importance_weight
        self.load_weight = cfg.moe_load_weight
        self.gate = nn.Linear(in_features, self.num_experts, bias=False)
        self.noise = nn.Linear(in_features, self.num_experts, bias=False)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.noise.weight)
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(in_features, cfg.expert_size),
                nn.ReLU(),
                nn.Linear(cfg.expert_size, out_features),
            )
            for _ in range(self.num_experts)
        )
        # Steps routed to each expert since the last pop_stats (training only; not state).
        self._routed = torch.zeros(self.num_experts, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        clean = self.gate(x)  # (N, E)
        std = F.softplus(self.noise(x)) + _NOISE_FLOOR if self.training else None
        noisy = clean + torch.randn_like(clean) * std if std is not None else clean
        # The (k+1)-th value is the threshold an expert outside the top k must beat.
        top_values, top_index = noisy.topk(self.top_k + 1, dim=1)
        chosen = top_index[:, : self.top_k]  # (N, k)
        weights = torch.softmax(top_values[:, : self.top_k], dim=1)  # (N, k)
        gates = torch.zeros_like(noisy).scatter(1, chosen, weights)  # (N, E), k nonzero per row
        out = x.new_zeros(x.shape[0], self.out_features)
        for e, expert in enumerate(self.experts):
            rows = (chosen == e).any(dim=1).nonzero().squeeze(1)
            if rows.numel():  # only the steps routed here run through this expert
                out = out.index_add(0, rows, gates[rows, e : e + 1] * expert(x[rows]))
        if self.training:
            self._record_balance(gates, chosen, clean, noisy, std, top_values)
        return out

    def _record_balance(
        self,
        gates: Tensor,
        chosen: Tensor,
        clean: Tensor,
        noisy: Tensor,
        std: Tensor | None,
        top: Tensor,
    ) -> None:
        importance = gates.sum(dim=0)  # (E,)
        # Steps sent to each expert (a gate may underflow to 0 and still count as a choice).
        routed = torch.bincount(chosen.flatten(), minlength=self.num_experts)  # (E,)
        if std is None:  # no noise: the load is the hard count
            load = routed.float()
        else:
            k = self.top_k
            kth, next_after = top[:, k - 1 : k], top[:, k : k + 1]  # (N, 1) each
            # In the top k, expert i stays there if it beats the (k+1)-th value; outside,
            # it gets in if it beats the k-th one.
            threshold = torch.where(noisy >= kth, next_after, kth)  # (N, E)
            load = _normal_cdf((clean - threshold) / std).sum(dim=0)
        self.set_aux_loss("moe_importance_loss", self.importance_weight * cv_squared(importance))
        self.set_aux_loss("moe_load_loss", self.load_weight * cv_squared(load))
        self._routed += routed.detach().to("cpu", torch.float64)

    def pop_stats(self) -> dict[str, float]:
        """``moe_max_load_ratio``: steps sent to the busiest expert over the mean per expert."""
        routed, self._routed = self._routed, torch.zeros_like(self._routed)
        if routed.sum() == 0:
            return {}
        return {"moe_max_load_ratio": float(routed.max() / routed.mean())}

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"


class LstmMoeEncoder(nn.Module):
    """LSTM_1 -> SparseMoE on every valid step -> dropout -> LSTM_2; (B, T, D) -> (B, T, H)."""

    bidirectional = False

    def __init__(self, input_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        width = cfg.hidden_size
        self.out_features = width
        self.lstm1 = nn.LSTM(input_dim, width, batch_first=True)
        self.moe = SparseMoE(width, width, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm2 = nn.LSTM(width, width, batch_first=True)
        _init_forget_bias(nn.ModuleList([self.lstm1, self.lstm2]))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        lengths_cpu = lengths.cpu()
        h = run_packed(self.lstm1, x, lengths_cpu)  # (B, T, H), 0 on padding
        mask = lengths_to_mask(lengths, h.shape[1])  # (B, T)
        mixed = h.new_zeros(h.shape[0], h.shape[1], self.moe.out_features)
        mixed = mixed.masked_scatter(mask.unsqueeze(-1), self.moe(h[mask]))
        return run_packed(self.lstm2, self.dropout(mixed), lengths_cpu)


@HEADS.register("lstm_moe")
def lstm_moe(input_dim: int, num_classes: int, cfg: HeadConfig) -> RecurrentHead:
    encoder = LstmMoeEncoder(input_dim, cfg)
    return RecurrentHead(
        input_dim, num_classes, cfg, cell="lstm", bidirectional=False, encoder=encoder
    )
