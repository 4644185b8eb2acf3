"""Token datasets and collators: packed pretraining windows, padded batches, generation prompts.

(Supervised fine-tuning data of every format goes through `trainlab.align.records` and
`trainlab.align.datasets.SFTDataset`, the one SFT pipeline.)

Batches follow docs/INTERFACES.md: dicts with ``input_ids``, ``attention_mask`` (1 = real token)
and ``labels`` (-100 = ignored), all ``[B, T]`` and *aligned* with ``input_ids``; the objective
does the shift by one. Datasets return unpadded 1-D tensors; `collate_padded` pads a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IGNORE_INDEX = -100
Example = dict[str, torch.Tensor]


def _encode(tok: PreTrainedTokenizerFast, texts: Sequence[str], *, special: bool = False) -> list[list[int]]:
    """Token ids, batched; ``special``: with the special tokens the tokenizer itself adds (its bos)."""
    if not texts:
        return []
    return [list(ids) for ids in tok(list(texts), add_special_tokens=special)["input_ids"]]


def _special_id(tok: PreTrainedTokenizerFast, attr: str) -> int:
    value = getattr(tok, attr)
    if value is None:
        raise ValueError(f"tokenizer has no {attr.removesuffix('_id')} (load it with load_tokenizer)")
    return int(value)


def flatten_token_lists(token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """All lists concatenated into one 1-D LongTensor, without an intermediate Python list."""
    total = sum(len(ids) for ids in token_lists)
    flat = np.fromiter(chain.from_iterable(token_lists), dtype=np.int64, count=total)
    return torch.from_numpy(flat)


def tokenize_documents(tok: PreTrainedTokenizerFast, docs: Sequence[str]) -> list[list[int]]:
    """Each document as the tokenizer encodes it (its own bos, if it adds one) + ``[eos]``: the
    boundaries tell the model where texts start and end."""
    eos = _special_id(tok, "eos_token_id")
    return [[*ids, eos] for ids in _encode(tok, docs, special=True)]


class PackedLMDataset(Dataset[Example]):
    """All token lists concatenated and cut into consecutive, non-overlapping ``seq_len`` windows.

    Packing wastes no compute on padding, and every window is full, so the loss per token is
    comparable across batches. Documents run across window edges (the bos/eos tokens mark the
    boundaries); the incomplete tail after the last full window is dropped. ``labels`` equal
    ``input_ids``: the objective shifts them, so each window trains ``seq_len - 1`` predictions.
    """

    def __init__(self, token_lists: Sequence[Sequence[int]] | torch.Tensor, seq_len: int) -> None:
        """``token_lists``: one id list per document, or a 1-D tensor already concatenated."""
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if isinstance(token_lists, torch.Tensor):
            flat = token_lists.reshape(-1).long()
        else:
            flat = flatten_token_lists(token_lists)
        n_windows = flat.numel() // seq_len
        if n_windows == 0:
            raise ValueError(f"{flat.numel()} tokens are fewer than one window of seq_len={seq_len}")
        self.seq_len = seq_len
        self.n_tokens_total = flat.numel()
        self.windows = flat[: n_windows * seq_len].reshape(n_windows, seq_len).contiguous()

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> Example:
        ids = self.windows[index]
        return {"input_ids": ids.clone(), "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    @property
    def tokens(self) -> torch.Tensor:
        """Every token the dataset serves, flattened (1-D LongTensor)."""
        return self.windows.view(-1)

    @property
    def n_tokens(self) -> int:
        return self.windows.numel()


def collate_padded(batch: Sequence[Example], pad_id: int | None) -> Example:
    """Stack 1-D examples into ``[B, T]``, padding on the right to the longest example.

    ``input_ids`` pad with ``pad_id`` (0 for a tokenizer without a pad token: padding is masked
    out, so its id never matters), ``labels`` with -100 (never trained on), ``attention_mask``
    with 0; any other key pads with 0. Right padding keeps position ids of real tokens at 0..n-1.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    length = max(int(ex["input_ids"].shape[0]) for ex in batch)
    fill = {"input_ids": 0 if pad_id is None else pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out: Example = {}
    for key in batch[0]:
        rows = torch.full((len(batch), length), fill.get(key, 0), dtype=batch[0][key].dtype)
        for i, ex in enumerate(batch):
            value = ex[key]
            rows[i, : value.shape[0]] = value
        out[key] = rows
    return out


def collate_left_padded_prompts(
    tok: PreTrainedTokenizerFast, prompts: Sequence[str], *, add_special_tokens: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` for batched generation: each prompt as the tokenizer encodes
    it (with the special tokens it adds itself, e.g. a Llama-style bos; a Qwen-style tokenizer adds
    none), padded left with the pad token (eos when there is none).

    Left padding puts every prompt's last token in the last column, so generation appends new
    tokens at the same position for the whole batch. The ids are those the alignment datasets
    and TRL give a plain prompt, so a model sees the same ids at generation as in training.
    """
    if not prompts:
        raise ValueError("no prompts to collate")
    pad = tok.pad_token_id if tok.pad_token_id is not None else _special_id(tok, "eos_token_id")
    rows = _encode(tok, prompts, special=add_special_tokens)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, length - len(row) :] = 1
    return input_ids, attention_mask
