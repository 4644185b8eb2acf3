"""The pretraining data a run uses: the embedded corpus + task lines, or the user's documents.

``build_pretraining_data(cfg)`` is the one entry point the trainer needs: it picks the tokenizer
(``cfg.tokenizer`` if given; else a BPE trained on the user's text; else the cached embedded
BPE), reads or generates the documents,
splits train/validation, tokenizes and packs them into fixed ``cfg.seq_len`` windows.

The embedded mix: ``cfg.task_fraction`` of the ``cfg.n_documents`` documents are blocks of a few
task lines (``12+35=47``), the rest are corpus stories and facts. Task lines come from the
``train`` side of the fixed hash split only (difficulty 1), so the ``eval`` problems that labs
score are never seen in pretraining and measure generalisation, not recall.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainlab.config import DataConfig
from trainlab.data.corpus import DATA_VERSION, generate_corpus
from trainlab.data.datasets import PackedLMDataset, flatten_token_lists, tokenize_documents
from trainlab.data.loaders import load_text_documents
from trainlab.data.tasks import make_task_records
from trainlab.data.tokenizer import embedded_tokenizer, embedded_tokenizer_key, load_tokenizer, train_tokenizer
from trainlab.errors import UserError
from trainlab.paths import trainlab_home
from trainlab.utils import atomic_write

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: Task lines per task document (inclusive range); several per document so the model sees the
#: "\n"-separated format it is evaluated with, not just a task right after bos.
TASK_LINES_PER_DOCUMENT = (4, 8)
PRETRAINING_TASK_DIFFICULTY = 1


@dataclass
class PretrainingData:
    """What the trainer consumes. ``info`` is JSON-serialisable provenance for the run record."""

    tokenizer: PreTrainedTokenizerFast
    train: PackedLMDataset
    val: PackedLMDataset
    info: dict[str, Any]


def task_documents(n_documents: int, seed: int) -> list[str]:
    """``n_documents`` blocks of newline-separated ``prompt+answer`` lines (train-split problems)."""
    rng = random.Random(seed)
    sizes = [rng.randint(*TASK_LINES_PER_DOCUMENT) for _ in range(n_documents)]
    records = make_task_records(sum(sizes), seed, difficulty=PRETRAINING_TASK_DIFFICULTY, split="train")
    docs: list[str] = []
    start = 0
    for size in sizes:
        docs.append("\n".join(r.text for r in records[start : start + size]))
        start += size
    return docs


def embedded_pretraining_texts(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train, val) documents: corpus and task documents mixed per ``cfg.task_fraction``, shuffled
    with ``cfg.seed``, the first ``cfg.val_fraction`` (at least one document) held out.
    """
    n = cfg.n_documents
    if n < 2:
        raise UserError(f"invalid value = {n}: need at least 2 documents for a train/validation split",
                        key="data.n_documents")
    n_tasks = round(n * cfg.task_fraction)
    docs = generate_corpus(n - n_tasks, cfg.seed) + task_documents(n_tasks, cfg.seed + 1)
    random.Random(cfg.seed + 2).shuffle(docs)
    n_val = min(n - 1, max(1, round(n * cfg.val_fraction)))
    return docs[n_val:], docs[:n_val]


def split_token_lists(
    token_lists: Sequence[list[int]], val_fraction: float, seq_len: int, seed: int
) -> tuple[list[list[int]], list[list[int]], str]:
    """Shuffle documents (seeded) and hold out about ``val_fraction`` of the *tokens* for validation.

    Whole documents go to validation when that works; when it cannot (one huge document, or a
    split that would leave either side without a full ``seq_len`` window) the concatenated
    stream is cut at a token position instead. Returns (train, val, "documents" | "tokens").
    """
    lists = list(token_lists)
    random.Random(seed).shuffle(lists)
    total = sum(len(ids) for ids in lists)
    if total < 2 * seq_len:
        raise UserError(f"the data has {total} tokens, fewer than two windows of seq_len={seq_len} "
                        "(one to train, one to validate); add data or lower data.seq_len")
    want = max(seq_len, round(total * val_fraction))
    taken = count = 0
    while count < len(lists) and taken < want:
        taken += len(lists[count])
        count += 1
    if taken <= 2 * want and total - taken >= seq_len:
        return lists[count:], lists[:count], "documents"
    flat = [t for ids in lists for t in ids]
    return [flat[want:]], [flat[:want]], "tokens"


def embedded_data_cache_path(cfg: DataConfig) -> Path:
    """Where the tokenized embedded data for ``cfg`` (with the embedded tokenizer) is cached.

    The key covers everything that changes the token streams (not ``seq_len``: packing is cheap
    and done on load), so every run and lab with the same data settings shares one file.
    """
    fields = {"data_version": DATA_VERSION, "tokenizer": embedded_tokenizer_key(cfg.vocab_size, cfg.seed),
              "n_documents": cfg.n_documents, "task_fraction": cfg.task_fraction,
              "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return trainlab_home() / "data" / f"embedded-{digest}.pt"


def _embedded_streams(cfg: DataConfig, tok: PreTrainedTokenizerFast, cache: Path | None
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(train tokens, val tokens, counts) for the embedded source; generated and tokenized once.

    Generating and tokenizing ~24k documents takes seconds on a small CPU; labs rebuild the same
    data many times, so the flat int32 token streams are cached (written atomically, safe when
    several processes build it at once). A damaged cache file is simply rebuilt.
    """
    if cache is not None and cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            return saved["train"].long(), saved["val"].long(), dict(saved["counts"])
        except Exception:  # truncated or foreign file: rebuild it below
            pass
    train_docs, val_docs = embedded_pretraining_texts(cfg)
    train = flatten_token_lists(tokenize_documents(tok, train_docs))
    val = flatten_token_lists(tokenize_documents(tok, val_docs))
    counts = {"n_documents_train": len(train_docs), "n_documents_val": len(val_docs)}
    if cache is not None:
        payload = {"train": train.int(), "val": val.int(), "counts": counts}
        atomic_write(cache, lambda tmp: torch.save(payload, tmp))
    return train, val, counts


def _pack(tokens: torch.Tensor, seq_len: int, which: str, hint: str) -> PackedLMDataset:
    if tokens.numel() < seq_len:
        raise UserError(f"the {which} split has {tokens.numel()} tokens, fewer than one window of "
                        f"seq_len={seq_len}; {hint}")
    return PackedLMDataset(tokens, seq_len)


def build_pretraining_data(cfg: DataConfig) -> PretrainingData:
    """Tokenizer + packed train/val datasets for ``cfg`` (see the module docstring).

    With ``source: embedded`` and the embedded tokenizer the token streams are cached under
    ``trainlab_home()/data/`` (`embedded_data_cache_path`); user data is read fresh every time.
    """
    # User data is read (and validated) first, so a bad file fails before any expensive work.
    docs = load_text_documents(cfg.source, cfg.text_key) if cfg.source != "embedded" else None
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
        tokenizer_name = str(Path(cfg.tokenizer).expanduser())
    elif docs is not None:
        # The user's own text with no tokenizer given: a BPE trained on that text fits it far
        # better than the embedded one (trained on the embedded corpus's few hundred words).
        tok = train_tokenizer(docs, cfg.vocab_size)
        tokenizer_name = f"bpe{cfg.vocab_size} trained on {cfg.source}"
    else:
        tok = embedded_tokenizer(cfg.vocab_size, cfg.seed)
        tokenizer_name = f"embedded:{embedded_tokenizer_key(cfg.vocab_size, cfg.seed)}"
    info: dict[str, Any] = {"source": cfg.source, "tokenizer": tokenizer_name, "vocab_size": len(tok),
                            "seq_len": cfg.seq_len}
    if cfg.source == "embedded":
        cache = None if cfg.tokenizer else embedded_data_cache_path(cfg)
        train_tokens, val_tokens, counts = _embedded_streams(cfg, tok, cache)
        info.update(counts, data_version=DATA_VERSION, task_fraction=cfg.task_fraction, split="documents",
                    cache=str(cache) if cache else None)
        hint = "raise data.n_documents or data.val_fraction, or lower data.seq_len"
    else:
        assert docs is not None
        train_ids, val_ids, how = split_token_lists(tokenize_documents(tok, docs), cfg.val_fraction,
                                                    cfg.seq_len, cfg.seed)
        train_tokens, val_tokens = flatten_token_lists(train_ids), flatten_token_lists(val_ids)
        info.update(n_documents_train=len(train_ids), n_documents_val=len(val_ids), split=how)
        hint = "add data or lower data.seq_len"
    train = _pack(train_tokens, cfg.seq_len, "training", hint)
    val = _pack(val_tokens, cfg.seq_len, "validation", hint)
    info.update(train_tokens=train.n_tokens, val_tokens=val.n_tokens, train_windows=len(train),
                val_windows=len(val), unigram_entropy_nats=round(unigram_entropy_nats(train), 4))
    return PretrainingData(tokenizer=tok, train=train, val=val, info=info)


def unigram_entropy_nats(dataset: PackedLMDataset | torch.Tensor) -> float:
    """Entropy (nats) of the token frequency distribution of ``dataset``'s tokens.

    The cross-entropy of the best model that ignores context; a validation loss below it shows
    the model uses context at all (the base lab compares the two).
    """
    tokens = dataset.tokens if isinstance(dataset, PackedLMDataset) else dataset.reshape(-1)
    if tokens.numel() == 0:
        raise ValueError("no tokens")
    counts = torch.bincount(tokens.long()).double()
    p = counts[counts > 0] / tokens.numel()
    return float(-(p * p.log()).sum())
