# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Lab 1.7 · 01 — Preference data
#
# DPO learns from pairs: a prompt, a preferred completion (`chosen`) and a dispreferred one
# (`rejected`). trainlab reads them in the formats TRL users already have (JSONL or a `datasets`
# dataset; plain strings or conversations), validates every record, and tokenizes prompt and
# completion *separately*, so the boundary between them is exact in token space.
#
# With no data given, the pairs come from the verifiable tasks: the correct answer is preferred
# over a plausible wrong one (off by one, swapped digits, partly sorted, ...).

# %%
import json
import os
import tempfile
from pathlib import Path

from trainlab.align.config import align_config
from trainlab.align.datasets import LengthPolicy, PreferenceDataset, collate_preference
from trainlab.align.records import embedded_alignment_data, load_records, use_chat_template
from trainlab.data.tokenizer import embedded_tokenizer

PRESET = os.environ.get("TRAINLAB_NOTEBOOK_PRESET", "quick")  # "tiny": the smoke test's setting
cfg = align_config("dpo", preset=PRESET)

# %% [markdown]
# ## The embedded pairs

# %%
data = embedded_alignment_data(cfg.align_data)
for pair in data.pairs[:6]:
    print(f"{pair.prompt!r:28} chosen={pair.chosen!r:12} rejected={pair.rejected!r}")
print(f"{len(data.pairs)} training pairs, {len(data.eval_pairs)} held-out pairs, "
      f"{len(data.eval_records)} held-out prompts; SFT data has {data.n_wrong_sft} wrong answers")

# %% [markdown]
# ## Validation: malformed lines are located, skipped and counted (or fatal with `--strict`)

# %%
folder = Path(tempfile.mkdtemp())
path = folder / "prefs.jsonl"
path.write_text("\n".join([
    json.dumps({"prompt": "12+3=", "chosen": "15", "rejected": "16"}),
    '{"prompt": "broken json", ',
    json.dumps({"prompt": "1+1=", "chosen": "2"}),
    json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "2"}),
    json.dumps({"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}]}),
]) + "\n")
# a conversational record needs a chat template; the embedded tokenizer has none, so use the built-in one
# (`align_data.chat_template=builtin` on the command line; it is saved with the model)
chat_tok = embedded_tokenizer(cfg.data.vocab_size, cfg.data.seed)
use_chat_template(chat_tok, "builtin")
report = load_records(path, "preference", tokenizer=chat_tok)
print(report.summary())
for issue in report.issues:
    print(issue)

# %% [markdown]
# ## Tokens: the prompt as the tokenizer encodes it (`<bos>` first), then `completion + [eos]`, one batch

# %%
tok = embedded_tokenizer(cfg.data.vocab_size, cfg.data.seed)
ds = PreferenceDataset(tok, data.pairs[:4], LengthPolicy.from_config(cfg.align))
batch = collate_preference([ds[i] for i in range(len(ds))], pad_id=tok.pad_token_id)
print(batch["input_ids"].shape, "(rows 0..B-1 chosen, B..2B-1 rejected)")
row = batch["input_ids"][0].tolist()
print([tok.decode([t]) for t in row])
print("supervised:", [tok.decode([t]) for t in batch["labels"][0].tolist() if t != -100])
