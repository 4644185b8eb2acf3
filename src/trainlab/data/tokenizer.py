"""Byte-level BPE tokenizers: train, save, load, and the cached embedded one.

Design choices, and why:

* **Byte-level** (GPT-2 style): every string is encodable, nothing maps to ``<unk>``, and decoding
  reproduces the input byte for byte. No normalizer, and ``clean_up_tokenization_spaces`` is off,
  so ``decode(encode(text)) == text`` exactly (tests check it).
* **Every digit is its own pre-token** (``Digits(individual_digits=True)`` before ``ByteLevel``):
  BPE can then never merge "47" into one token, so arithmetic is learned digit by digit, the
  same way for every number, instead of memorising one embedding per number.
* **Special tokens** ``<pad>``, ``<bos>``, ``<eos>`` have ids 0, 1, 2 (listed first to the trainer).
  The post-processor adds ``<bos>`` in front of every text (``tok(text)``; a Llama-style
  tokenizer does the same), so every pipeline that tokenizes "as the tokenizer defines it"
  (the alignment datasets, generation, TRL) starts sequences with bos; ``add_special_tokens=False``
  gives the bare ids. eos is appended by id where a sequence ends. ``split_special_tokens`` is
  on: the *text* "<eos>" inside a document is encoded as ordinary characters, so data can never
  inject control tokens; only code adds them, by id. (Tokenizers saved before the post-processor
  existed get it on load, `load_tokenizer`.)
* Other tokenizers are used exactly as saved: `load_tokenizer` never invents a bos (a Qwen-style
  tokenizer has none) or a pad token for a folder that has a ``tokenizer_config.json``.
* The returned object is a ``transformers.PreTrainedTokenizerFast`` (in transformers 5 an alias
  of ``TokenizersBackend``) with pad/bos/eos set, so HF tooling and ``from_pretrained`` work.
  ``save_pretrained`` writes ``tokenizer.json`` and ``tokenizer_config.json``; transformers 5
  stores the special-token map inside ``tokenizer_config.json`` (older versions also wrote a
  separate ``special_tokens_map.json``).

The embedded tokenizer is trained once per ``(vocab_size, seed, DATA_VERSION)`` and cached under
``trainlab_home()/tokenizers/<key>/``. It is built in a temporary folder next to the final one
and renamed into place; rename is atomic, so two processes building it at once both end up
loading one complete tokenizer, and a crash never leaves a half-written one behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from trainlab.data.corpus import DATA_VERSION, generate_corpus
from trainlab.data.tasks import DIFFICULTIES, make_task_records
from trainlab.errors import UserError
from trainlab.paths import trainlab_home
from trainlab.utils import write_json

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TOKENIZER_FILE = "tokenizer.json"

#: How much embedded text the embedded tokenizer is trained on: a subsample is enough to learn
#: every word of the closed vocabulary, and keeps the one-time build to a few seconds.
EMBEDDED_TOKENIZER_DOCUMENTS = 6000
EMBEDDED_TOKENIZER_TASK_RECORDS = 3000  # per difficulty level

# Names under which other tokenizers keep their special tokens (for tokenizer.json files that
# come without a tokenizer_config.json).
_EOS_NAMES = (EOS, "</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>")
_BOS_NAMES = (BOS, "<s>", "<|begin_of_text|>", "<|startoftext|>")
_PAD_NAMES = (PAD, "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")


def _new_backend() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _bos_post_processor() -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1",
                                         special_tokens=[(BOS, BOS_ID)])


def _is_ours(tok: PreTrainedTokenizerFast) -> bool:
    """A tokenizer trainlab trained (its special tokens at ids 0, 1, 2)."""
    vocab = tok.get_vocab()
    return all(vocab.get(name) == i for name, i in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID), strict=True))


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """A ``tokenizers.Tokenizer`` that has our special tokens, as a ``PreTrainedTokenizerFast``
    whose post-processor adds ``<bos>``."""
    backend.post_processor = _bos_post_processor()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``. The vocabulary may come out smaller than ``vocab_size``
    when the texts run out of pairs seen ``min_frequency`` times (a closed corpus does).
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be >= {minimum} (256 bytes + special tokens), got {vocab_size}")
    backend = _new_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tok = wrap_tokenizer(backend)
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    if ids != [PAD_ID, BOS_ID, EOS_ID]:  # the trainer assigns specials first; guard the contract
        raise RuntimeError(f"special token ids are {ids}, expected {[PAD_ID, BOS_ID, EOS_ID]}")
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """``save_pretrained`` into ``directory`` (created); returns the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out


def _find_token(tok: PreTrainedTokenizerFast, names: Iterable[str]) -> str | None:
    vocab = tok.get_vocab()
    return next((name for name in names if name in vocab), None)


def _ensure_special_tokens(tok: PreTrainedTokenizerFast, path: Path, *, bare: bool) -> PreTrainedTokenizerFast:
    """eos is required. A bare ``tokenizer.json`` (no config to say which token is which) gets
    eos/bos/pad by well-known names (pad falling back to eos); a saved tokenizer is left as it is."""
    if tok.eos_token is None:
        eos = _find_token(tok, _EOS_NAMES)
        if eos is None:
            raise UserError(f"tokenizer has no end-of-sequence token (looked for {', '.join(_EOS_NAMES)})",
                            path=path)
        tok.eos_token = eos
    if bare:
        if tok.bos_token is None:
            tok.bos_token = _find_token(tok, _BOS_NAMES)
        if tok.pad_token is None:
            tok.pad_token = _find_token(tok, _PAD_NAMES) or tok.eos_token
    if _is_ours(tok) and tok("a")["input_ids"][:1] != [BOS_ID]:
        tok.backend_tokenizer.post_processor = _bos_post_processor()  # saved before the post-processor existed
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a folder (``save_pretrained`` layout) or a ``tokenizer.json`` file.

    Raises `UserError` naming the path when it is missing or not a valid tokenizer. A folder
    with a ``tokenizer_config.json`` is loaded with ``from_pretrained`` (keeps its special
    tokens, and gets no bos or pad it does not have); a bare ``tokenizer.json`` gets eos/bos/pad by
    well-known names.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError("tokenizer not found (expected a tokenizer.json file or a folder containing one)",
                        path=p)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"folder has no {TOKENIZER_FILE} (only fast tokenizers are supported)", path=p)
    bare = not (p.is_dir() and (p / "tokenizer_config.json").is_file())
    try:
        if not bare:
            tok = PreTrainedTokenizerFast.from_pretrained(str(p))
        else:
            tok = PreTrainedTokenizerFast(tokenizer_file=str(file), clean_up_tokenization_spaces=False,
                                          split_special_tokens=True)
    except Exception as exc:  # tokenizers/transformers raise bare Exceptions for bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"not a valid tokenizer: {reason}", path=file) from None
    return _ensure_special_tokens(tok, p, bare=bare)


# --------------------------------------------------------------------------------------------
# The embedded tokenizer
# --------------------------------------------------------------------------------------------


def embedded_tokenizer_key(vocab_size: int, seed: int) -> str:
    return f"bpe{vocab_size}-seed{seed}-{DATA_VERSION}"


def embedded_tokenizer_dir(vocab_size: int, seed: int) -> Path:
    """Where the embedded tokenizer for these settings lives (it may not be built yet)."""
    return trainlab_home() / "tokenizers" / embedded_tokenizer_key(vocab_size, seed)


def embedded_tokenizer_texts(seed: int) -> Iterator[str]:
    """The training texts: a subsample of the embedded corpus plus task lines at every difficulty
    (so every character and number format the pretraining data uses is covered).
    """
    yield from generate_corpus(EMBEDDED_TOKENIZER_DOCUMENTS, seed)
    for difficulty in DIFFICULTIES:
        for record in make_task_records(EMBEDDED_TOKENIZER_TASK_RECORDS, seed + difficulty,
                                        difficulty=difficulty):
            yield record.text + "\n"


def embedded_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    """The BPE trained on the embedded data, built once per key and then loaded from the cache."""
    final = embedded_tokenizer_dir(vocab_size, seed)
    if final.exists():
        try:
            return load_tokenizer(final)
        except UserError:  # damaged cache entry (edited, truncated): rebuild it below
            shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        start = time.perf_counter()
        tok = train_tokenizer(embedded_tokenizer_texts(seed), vocab_size)
        save_tokenizer(tok, tmp)
        write_json(tmp / "build_info.json", {
            "key": final.name, "vocab_size_requested": vocab_size, "vocab_size": len(tok), "seed": seed,
            "data_version": DATA_VERSION, "build_seconds": round(time.perf_counter() - start, 3),
        })
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / TOKENIZER_FILE).is_file():
                raise
            # another process renamed its build into place first: use that one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(final)
