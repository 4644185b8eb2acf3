"""Token datasets and collators: packed pretraining windows, SFT examples, padded batches.

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

from trainlab.data.loaders import SFTRecord

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

IGNORE_INDEX = -100
Example = dict[str, torch.Tensor]


def _encode(tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """Bare token ids (no special tokens), batched through the Rust tokenizer for speed."""
    if not texts:
        return []
    return [enc.ids for enc in tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]


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
    """``[bos] + ids + [eos]`` per document: the boundaries tell the model where texts start and end."""
    bos, eos = _special_id(tok, "bos_token_id"), _special_id(tok, "eos_token_id")
    return [[bos, *ids, eos] for ids in _encode(tok, docs)]


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


class SFTDataset(Dataset[Example]):
    """Prompt/completion examples; only the completion (and eos) is supervised.

    Prompt and completion are tokenized *separately* and their ids concatenated,
    ``[bos] + prompt_ids + completion_ids + [eos]``, so the boundary is exact in token space: a
    BPE merge can never straddle it and move a prompt character into the supervised part.
    ``labels`` are ``-100`` over bos and the prompt.

    Truncation to ``max_len`` tokens: the prompt keeps at most its last ``max_prompt_len``
    tokens (default: half of ``max_len``; left truncation keeps the text nearest the answer),
    but gives up only as many tokens as needed; the completion fills the remaining room and is
    cut from the right. eos is supervised only when it fits after the whole completion (a cut
    completion must not teach the model to stop there). ``.truncated`` counts records that did
    not fit; those left with no completion token at all are dropped and counted in ``.dropped``.
    ``.kept_indices[i]`` is the position in ``records`` of example ``i``.
    """

    def __init__(
        self,
        tok: PreTrainedTokenizerFast,
        records: Sequence[SFTRecord],
        max_len: int,
        *,
        max_prompt_len: int | None = None,
    ) -> None:
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 (bos, a prompt token, a completion token), got {max_len}")
        self.max_len = max_len
        self.max_prompt_len = max_len // 2 if max_prompt_len is None else max_prompt_len
        self.bos_id = _special_id(tok, "bos_token_id")
        self.eos_id = _special_id(tok, "eos_token_id")
        prompts = _encode(tok, [r.prompt for r in records])
        completions = _encode(tok, [r.completion for r in records])
        self.examples: list[tuple[list[int], list[int]]] = []  # (input ids, labels)
        self.kept_indices: list[int] = []
        self.dropped = 0
        self.truncated = 0
        for index, (prompt_ids, completion_ids) in enumerate(zip(prompts, completions, strict=True)):
            example = self._build(prompt_ids, completion_ids)
            if example is None:
                self.dropped += 1
            else:
                self.examples.append(example)
                self.kept_indices.append(index)

    def _build(self, prompt: list[int], completion: list[int]) -> tuple[list[int], list[int]] | None:
        room = self.max_len - 1  # after bos
        if len(prompt) + len(completion) + 1 > room:
            self.truncated += 1
            keep = min(len(prompt), room, max(self.max_prompt_len, room - len(completion) - 1))
            prompt = prompt[len(prompt) - keep :]
        # slicing drops eos first, then the completion's tail: eos survives only if all fits
        target = [*completion, self.eos_id][: room - len(prompt)]
        if min(len(completion), len(target)) == 0:  # no completion token left to learn from
            return None
        input_ids = [self.bos_id, *prompt, *target]
        labels = [IGNORE_INDEX] * (1 + len(prompt)) + target
        return input_ids, labels

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        input_ids, labels = self.examples[index]
        ids = torch.tensor(input_ids, dtype=torch.long)
        return {"input_ids": ids, "labels": torch.tensor(labels, dtype=torch.long),
                "attention_mask": torch.ones_like(ids)}


def collate_padded(batch: Sequence[Example], pad_id: int) -> Example:
    """Stack 1-D examples into ``[B, T]``, padding on the right to the longest example.

    ``input_ids`` pad with ``pad_id``, ``labels`` with -100 (never trained on), ``attention_mask``
    with 0; any other key pads with 0. Right padding keeps position ids of real tokens at 0..n-1.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    length = max(int(ex["input_ids"].shape[0]) for ex in batch)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out: Example = {}
    for key in batch[0]:
        rows = torch.full((len(batch), length), fill.get(key, 0), dtype=batch[0][key].dtype)
        for i, ex in enumerate(batch):
            value = ex[key]
            rows[i, : value.shape[0]] = value
        out[key] = rows
    return out


def collate_left_padded_prompts(
    tok: PreTrainedTokenizerFast, prompts: Sequence[str], *, add_bos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` for batched generation: ``[bos] + prompt ids``, padded left.

    Left padding puts every prompt's last token in the last column, so generation appends new
    tokens at the same position for the whole batch. The prompts are tokenized exactly as
    `SFTDataset` tokenizes them, so a model sees the same ids at generation as in training.
    """
    if not prompts:
        raise ValueError("no prompts to collate")
    pad = _special_id(tok, "pad_token_id")
    prefix = [_special_id(tok, "bos_token_id")] if add_bos else []
    rows = [prefix + ids for ids in _encode(tok, prompts)]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, length - len(row) :] = 1
    return input_ids, attention_mask
