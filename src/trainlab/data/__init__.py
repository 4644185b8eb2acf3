"""trainlab.data: corpus, verifiable tasks, tokenizer, user-data loaders and token datasets.

With no user data, everything a run needs is generated here: an English-like corpus
(`generate_corpus`), arithmetic/list/word tasks with exact oracles (`TASKS`, `score`), a
byte-level BPE trained on them (`embedded_tokenizer`, cached), and packed datasets
(`build_pretraining_data`). User documents enter through `load_text_documents` (and `read_jsonl`, the
one JSONL reader), which name file, line and key for anything malformed; alignment and SFT records
of every TRL format are read by `trainlab.align.records`.
"""

from trainlab.data.corpus import DATA_VERSION, generate_corpus
from trainlab.data.datasets import (
    IGNORE_INDEX,
    PackedLMDataset,
    collate_left_padded_prompts,
    collate_padded,
    flatten_token_lists,
    tokenize_documents,
)
from trainlab.data.embedded import (
    PretrainingData,
    build_pretraining_data,
    embedded_data_cache_path,
    embedded_pretraining_texts,
    split_token_lists,
    task_documents,
    unigram_entropy_nats,
)
from trainlab.data.loaders import JsonlRow, load_text_documents, read_jsonl
from trainlab.data.tasks import (
    TASKS,
    Task,
    TaskRecord,
    extract_answer,
    get_task,
    make_task_records,
    problem_split,
    score,
)
from trainlab.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    embedded_tokenizer,
    embedded_tokenizer_dir,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "BOS_ID",
    "DATA_VERSION",
    "EOS_ID",
    "IGNORE_INDEX",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TASKS",
    "JsonlRow",
    "PackedLMDataset",
    "PretrainingData",
    "Task",
    "TaskRecord",
    "build_pretraining_data",
    "collate_left_padded_prompts",
    "collate_padded",
    "embedded_data_cache_path",
    "embedded_pretraining_texts",
    "embedded_tokenizer",
    "embedded_tokenizer_dir",
    "extract_answer",
    "flatten_token_lists",
    "generate_corpus",
    "get_task",
    "load_text_documents",
    "load_tokenizer",
    "make_task_records",
    "problem_split",
    "read_jsonl",
    "save_tokenizer",
    "score",
    "split_token_lists",
    "task_documents",
    "tokenize_documents",
    "train_tokenizer",
    "unigram_entropy_nats",
]
