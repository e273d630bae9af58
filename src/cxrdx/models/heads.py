"""Heads that read the backbone's ``C x 7 x 7`` map as a 49-step sequence.

``lstm`` / ``gru`` / ``bilstm`` / ``bigru`` keep the RNN's final state;
``attention`` pools a bidirectional GRU's outputs with learned attention;
``pool`` is the CNN-alone baseline (global average pool + linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..registry import Registry


def feature_map_to_sequence(fmap: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]``, row by row as Keras' Reshape((49, C)) does on 7x7xC."""
    return fmap.flatten(2).transpose(1, 2)


class AttentionPool(nn.Module):
    """Additive attention over time: ``softmax(v . tanh(W o_t))``-weighted sum of the outputs."""

    def __init__(self, dim: int, attn_dim: int = 64):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Linear(attn_dim, 1, bias=False))

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(outputs).squeeze(-1), dim=1)
        return torch.bmm(weights.unsqueeze(1), outputs).squeeze(1)


class SequenceHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rnn: str = "lstm",
        bidirectional: bool = False,
        pooling: str = "last",
        hidden: int = 128,
        proj_dim: int = 256,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.pooling = pooling
        self.bidirectional = bidirectional
        self.is_lstm = rnn == "lstm"
        layers: list[nn.Module] = [nn.LayerNorm(in_channels)]
        step_dim = in_channels
        if proj_dim:
            layers += [nn.Linear(in_channels, proj_dim), nn.GELU(), nn.Dropout(dropout)]
            step_dim = proj_dim
        self.step = nn.Sequential(*layers)
        rnn_cls = nn.LSTM if self.is_lstm else nn.GRU
        self.rnn = rnn_cls(step_dim, hidden, batch_first=True, bidirectional=bidirectional)
        out_dim = hidden * (2 if bidirectional else 1)
        self.attention = AttentionPool(out_dim) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(out_dim, num_classes)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        seq = self.step(feature_map_to_sequence(fmap))
        outputs, state = self.rnn(seq)
        if self.attention is not None:
            pooled = self.attention(outputs)
        else:
            h_n = state[0] if self.is_lstm else state
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else h_n[-1]
        return self.fc(self.dropout(pooled))


class PoolHead(nn.Module):
    """The CNN-alone baseline: global average pool, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.3, **_: object):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(fmap.mean(dim=(2, 3))))


@dataclass(frozen=True)
class HeadSpec:
    name: str
    description: str
    rnn: str | None = None
    bidirectional: bool = False
    pooling: str = "last"


HEADS: Registry[HeadSpec] = Registry("heads", describe=lambda spec: spec.description)
for _spec in (
    HeadSpec("lstm", "LSTM over the 49-step sequence, last state", "lstm"),
    HeadSpec("gru", "GRU over the 49-step sequence, last state", "gru"),
    HeadSpec("bilstm", "bidirectional LSTM, both final states", "lstm", True),
    HeadSpec("bigru", "bidirectional GRU, both final states", "gru", True),
    HeadSpec("attention", "bidirectional GRU with attention pooling", "gru", True, "attention"),
    HeadSpec("pool", "CNN alone: global average pool + linear (baseline)"),
):
    HEADS.register(_spec.name, _spec)


def create_head(name: str, in_channels: int, num_classes: int, hidden: int = 128, proj_dim: int = 256, dropout: float = 0.3) -> nn.Module:
    """Head ``name`` from :data:`HEADS`; :class:`~cxrdx.registry.UnknownNameError` if there is none."""
    spec = HEADS.get(name)
    if spec.rnn is None:
        return PoolHead(in_channels, num_classes, dropout=dropout)
    return SequenceHead(
        in_channels, num_classes, rnn=spec.rnn, bidirectional=spec.bidirectional, pooling=spec.pooling,
        hidden=hidden, proj_dim=proj_dim, dropout=dropout,
    )
