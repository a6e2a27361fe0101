"""Recurrent heads: ``lstm``, ``bilstm``, ``gru``, ``bigru``.

A stack of 1-3 recurrent layers runs on packed sequences, so padded steps are never fed to a
cell and cannot change any state. The per-step outputs are reduced to one video vector
(``cfg.reduction``), passed through the top block (FC -> ReLU -> dropout) and the classifier.
``forward_per_frame`` applies the same top block and classifier at every valid step; for the
unidirectional heads step t has seen frames 0..t only, for the bidirectional ones the whole video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from heads.models.base import (
    HEADS,
    AdditiveAttentionPool,
    Head,
    HeadConfig,
    last_valid,
    masked_mean,
    weighted_sum,
)

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


def run_packed(rnn: nn.RNNBase, h: Tensor, lengths_cpu: Tensor) -> Tensor:
    """Run ``rnn`` over the valid steps of h (B, T, F_in) only -> (B, T, F_out), 0 on padding."""
    packed = pack_padded_sequence(h, lengths_cpu, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
    return out


class RecurrentEncoder(nn.Module):
    """Stacked single-layer RNNs with dropout between layers and optional residual skips.

    With ``residual``, each layer adds its input to its output, through a bias-free linear
    projection when the widths differ (the first layer, unless D == hidden * directions).
    """

    def __init__(
        self,
        input_dim: int,
        cell: str,
        cfg: HeadConfig,
        bidirectional: bool,
    ) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        self.out_features = cfg.hidden_size * directions
        self.bidirectional = bidirectional
        self.layers = nn.ModuleList()
        self.skips = nn.ModuleList()
        in_features = input_dim
        for _ in range(cfg.num_layers):
            rnn = _CELLS[cell](
                in_features, cfg.hidden_size, batch_first=True, bidirectional=bidirectional
            )
            self.layers.append(rnn)
            if cfg.residual and in_features != self.out_features:
                self.skips.append(nn.Linear(in_features, self.out_features, bias=False))
            elif cfg.residual:
                self.skips.append(nn.Identity())
            in_features = self.out_features
        self.dropout = nn.Dropout(cfg.dropout)
        if cell == "lstm":
            _init_forget_bias(self.layers)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T, D), lengths (B,) -> (B, T, hidden * directions)."""
        lengths_cpu = lengths.cpu()  # pack_padded_sequence wants CPU lengths
        h = x
        for i, rnn in enumerate(self.layers):
            out = run_packed(rnn, h, lengths_cpu)
            if self.skips:
                out = out + self.skips[i](h)
            if i < len(self.layers) - 1:
                out = self.dropout(out)
            h = out
        return h


def _init_forget_bias(layers: nn.ModuleList) -> None:
    """Start LSTM forget gates open (bias 1) so early events are remembered from step one."""
    for rnn in layers:
        for name, bias in rnn.named_parameters():
            if name.startswith("bias_ih"):
                hidden = bias.shape[0] // 4  # gate order: input, forget, cell, output
                with torch.no_grad():
                    bias[hidden : 2 * hidden].fill_(1.0)
            elif name.startswith("bias_hh"):
                hidden = bias.shape[0] // 4
                with torch.no_grad():
                    bias[hidden : 2 * hidden].fill_(0.0)


def _reduce_last(head: RecurrentHead, h: Tensor, lengths: Tensor) -> Tensor:
    if not head.encoder.bidirectional:
        return last_valid(h, lengths)
    # The backward direction has read the whole video when it reaches step 0.
    half = h.shape[2] // 2
    return torch.cat([last_valid(h[..., :half], lengths), h[:, 0, half:]], dim=1)


def _reduce_attention(head: RecurrentHead, h: Tensor, lengths: Tensor) -> Tensor:
    assert head.attention is not None  # built whenever reduction == "attention"
    return head.attention(h, lengths)


REDUCERS: dict[str, Callable[[RecurrentHead, Tensor, Tensor], Tensor]] = {
    "last": _reduce_last,
    "mean": lambda head, h, lengths: masked_mean(h, lengths),
    "weighted": lambda head, h, lengths: weighted_sum(h, lengths),
    "attention": _reduce_attention,
}


class RecurrentHead(Head):
    """Recurrent encoder -> reduction over valid steps -> top block -> classifier."""

    supports_per_frame = True

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        cfg: HeadConfig,
        *,
        cell: str,
        bidirectional: bool,
        reduction: str | None = None,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__(input_dim, num_classes, cfg)
        self.reduction = reduction if reduction is not None else cfg.reduction
        # Any (B, T, D), (B,) -> (B, T, out_features) encoder with a ``bidirectional`` flag.
        self.encoder = (
            encoder
            if encoder is not None
            else RecurrentEncoder(input_dim, cell, cfg, bidirectional)
        )
        width = self.encoder.out_features
        self.attention = (
            AdditiveAttentionPool(width, cfg.attention_size)
            if self.reduction == "attention"
            else None
        )
        self.top = nn.Sequential(nn.Linear(width, cfg.fc_size), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.fc = self.make_classifier(cfg.fc_size, num_classes)

    def encode_frames(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.encoder(x, lengths)  # (B, T, hidden * directions)

    @property
    def supports_attention(self) -> bool:
        return self.attention is not None

    def attention_weights(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.attention is None:
            return super().attention_weights(x, lengths)
        frames, lengths = self.prepare(x, lengths)
        return self.attention.weights(self.encode_frames(frames, lengths), lengths)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        return REDUCERS[self.reduction](self, self.encoder(x, lengths), lengths)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


@HEADS.register("lstm")
def lstm(input_dim: int, num_classes: int, cfg: HeadConfig) -> RecurrentHead:
    return RecurrentHead(input_dim, num_classes, cfg, cell="lstm", bidirectional=False)


@HEADS.register("bilstm")
def bilstm(input_dim: int, num_classes: int, cfg: HeadConfig) -> RecurrentHead:
    return RecurrentHead(input_dim, num_classes, cfg, cell="lstm", bidirectional=True)


@HEADS.register("gru")
def gru(input_dim: int, num_classes: int, cfg: HeadConfig) -> RecurrentHead:
    return RecurrentHead(input_dim, num_classes, cfg, cell="gru", bidirectional=False)


@HEADS.register("bigru")
def bigru(input_dim: int, num_classes: int, cfg: HeadConfig) -> RecurrentHead:
    return RecurrentHead(input_dim, num_classes, cfg, cell="gru", bidirectional=True)
