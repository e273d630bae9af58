"""Patient-level models over a padded exam sequence ``[B, T, D]`` with lengths ``[B]``.

* :class:`SeriesRNN` - GRU/LSTM over the exams in time order; padding is masked with
  ``pack_padded_sequence`` so its output does not depend on how much padding there is.
* :class:`MeanPoolBaseline` - the same per-exam encoder, averaged over valid exams
  (order-blind by construction).
* :class:`LastExamBaseline` - the same per-exam encoder on the most recent exam alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..registry import Registry

SERIES_MODELS: Registry[type[nn.Module]] = Registry("series-models")


@SERIES_MODELS.register("rnn")
class SeriesRNN(nn.Module):
    """GRU/LSTM over the exams in time order (+ time gaps)."""

    def __init__(self, in_dim: int, num_classes: int = 2, hidden: int = 32, rnn: str = "gru", dropout: float = 0.2):
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be gru or lstm, not {rnn!r}")
        self.is_lstm = rnn == "lstm"
        self.rnn = (nn.LSTM if self.is_lstm else nn.GRU)(in_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h_last = (state[0] if self.is_lstm else state)[-1]  # the state after each sequence's last valid exam
        return self.fc(self.dropout(h_last))


class _ExamEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def valid_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, T]`` True on real exams, False on padding."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


class _EncoderBaseline(nn.Module):
    """Order-free baselines: the same per-exam encoder, then a linear layer on one pooled exam vector."""

    def __init__(self, in_dim: int, num_classes: int = 2, hidden: int = 32, dropout: float = 0.2, **_: object):
        super().__init__()
        self.encoder = _ExamEncoder(in_dim, hidden, dropout)
        self.fc = nn.Linear(hidden, num_classes)


@SERIES_MODELS.register("mean_pool")
class MeanPoolBaseline(_EncoderBaseline):
    """mean of per-exam encodings (order-blind)"""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = valid_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1).float()
        pooled = (self.encoder(x) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.fc(pooled)


@SERIES_MODELS.register("last_exam")
class LastExamBaseline(_EncoderBaseline):
    """most recent exam alone"""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        last = x[torch.arange(len(x), device=x.device), lengths.to(x.device) - 1]
        return self.fc(self.encoder(last))


def create_series_model(name: str, in_dim: int, num_classes: int = 2, hidden: int = 32, rnn: str = "gru", dropout: float = 0.2) -> nn.Module:
    """A registered series model; unknown names raise :class:`cxrdx.registry.UnknownNameError`."""
    cls = SERIES_MODELS.get(name)
    if cls is SeriesRNN:
        return SeriesRNN(in_dim, num_classes, hidden=hidden, rnn=rnn, dropout=dropout)
    return cls(in_dim, num_classes, hidden=hidden, dropout=dropout)
