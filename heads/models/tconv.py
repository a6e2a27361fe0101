"""``tconv``: slow fusion (Karpathy et al. 2014) as a hierarchy of temporal convolutions.

Each level is a 1-D convolution over time (kernel 3, stride 2) followed by ReLU, so every
level halves the number of steps and doubles the temporal extent each output sees. The first
``cfg.num_layers`` levels have their own weights; a last, shared level is then applied again
until every video is one step long, so that step has seen the whole video, however long.

Masking keeps padding out: before every convolution the steps past each video's own length
are set to 0, which is exactly the zero padding a video alone in its batch gets at its end.
A video that is already one step long is left as it is while longer neighbours continue.
"""

from __future__ import annotations

from torch import Tensor, nn

from heads.models.base import HEADS, Head, HeadConfig, lengths_to_mask

KERNEL, STRIDE = 3, 2


def _level(in_channels: int, out_channels: int) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, KERNEL, stride=STRIDE, padding=KERNEL // 2)


def _apply(conv: nn.Conv1d, h: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """h (B, F, T) with lengths (B,) -> ReLU(conv(h)) (B, F', ceil(T / 2)), new lengths."""
    mask = lengths_to_mask(lengths, h.shape[2]).unsqueeze(1)
    out = conv(h.masked_fill(~mask, 0.0)).relu()
    return out, (lengths + 1) // STRIDE


class TemporalConvHead(Head):
    """Temporal-convolution levels until one step covers each video -> top block -> classifier."""

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__(input_dim, num_classes, cfg)
        width = cfg.hidden_size
        self.levels = nn.ModuleList(
            _level(input_dim if i == 0 else width, width) for i in range(cfg.num_layers)
        )
        self.shared = _level(width, width)  # repeated until the whole video is covered
        self.top = nn.Sequential(nn.Linear(width, cfg.fc_size), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.fc = self.make_classifier(cfg.fc_size, num_classes)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1)
        h = x.masked_fill(~mask, 0.0).transpose(1, 2)  # (B, D, T); NaN padding cannot leak
        for conv in self.levels:
            h, lengths = _apply(conv, h, lengths)
        while h.shape[2] > 1:
            done = (lengths == 1).view(-1, 1, 1)
            new, new_lengths = _apply(self.shared, h, lengths)
            h = new.where(~done, h[:, :, : new.shape[2]])  # finished videos keep their step
            lengths = new_lengths.where(~done.view(-1), lengths)
        return h[:, :, 0]  # (B, hidden_size)


@HEADS.register("tconv")
def tconv(input_dim: int, num_classes: int, cfg: HeadConfig) -> TemporalConvHead:
    return TemporalConvHead(input_dim, num_classes, cfg)
