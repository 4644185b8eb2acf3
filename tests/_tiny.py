"""Tiny models and data for the training-loop tests (fast on 2 CPU cores)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainlab.config import ModelConfig, TrainConfig
from trainlab.model.decoder import Decoder

VOCAB = 48



def tiny_decoder(seed: int = 0, *, vocab: int = VOCAB, dim: int = 32, n_layers: int = 2) -> Decoder:
    """The real decoder at toy size, initialised from ``seed``."""
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=2, max_seq_len=64))


class TinyLM(nn.Module):
    """A minimal stand-in for the `CausalLM` protocol, with a bias (for weight-decay groups).

    Causal by construction: position t sees a running mean of embeddings 0..t, so right padding
    cannot change real positions. ``poison = True`` makes the hidden states NaN.
    """

    def __init__(self, vocab: int = VOCAB, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)  # weight (2-D) and bias (1-D)
        self.gain = nn.Parameter(torch.ones(dim))  # a norm-like gain (1-D)
        self.poison = False

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None) -> Tensor:
        del attention_mask, position_ids
        x = self.embed(input_ids)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
        h = x + torch.tanh(self.mix(x.cumsum(1) / steps))
        h = h * self.gain
        return h * float("nan") if self.poison else h

    def output_embedding(self) -> Tensor:
        return self.embed.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.hidden_states(input_ids, attention_mask) @ self.output_embedding().T


def variable_examples(n: int, *, min_len: int = 3, max_len: int = 12, seed: int = 0,
                      vocab: int = VOCAB, prompt_mask: bool = True) -> list[dict[str, Tensor]]:
    """``n`` 1-D examples of random lengths; with ``prompt_mask`` a random prefix is unsupervised."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(1, vocab, (length,), generator=g)
        labels = ids.clone()
        if prompt_mask:
            labels[: int(torch.randint(0, length - 1, (1,), generator=g))] = -100
        out.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    return out


def pad_collate(examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Right-pad to the longest example: input 0, mask 0, labels -100."""
    length = max(int(e["input_ids"].shape[0]) for e in examples)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    batch = {}
    for key, value in fill.items():
        rows = torch.full((len(examples), length), value, dtype=torch.long)
        for i, e in enumerate(examples):
            rows[i, : e[key].shape[0]] = e[key]
        batch[key] = rows
    return batch


def fixed_examples(n: int, seq_len: int = 16, *, seed: int = 0, vocab: int = VOCAB) -> list[dict[str, Tensor]]:
    """Packed-style windows: fixed length, fully supervised, with a learnable pattern."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = int(torch.randint(0, vocab, (1,), generator=g))
        step = int(torch.randint(1, 4, (1,), generator=g))
        ids = (start + step * torch.arange(seq_len)) % vocab
        out.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)})
    return out


def train_config(**overrides: object) -> TrainConfig:
    """A fast CPU config: no warm-up surprises, quiet logging cadence."""
    base: dict[str, object] = dict(max_steps=6, batch_size=4, grad_accum=1, lr=1e-2, warmup_steps=2,
                                   eval_every=0, save_every=0, save_every_minutes=0, log_every=1, device="cpu",
                                   seed=0)
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]
