"""The reference policy π_ref of DPO and KTO: a frozen copy, or its log-probs computed once and cached.

DPO's loss needs ``log π_ref(y|x)`` for every completion it trains on. π_ref never changes, so
there are two ways to get it:

* ``frozen`` (`FrozenReference`): keep a copy of the initial weights, ``requires_grad=False``,
  in eval mode, and run it on every batch (no graph is built). Costs a second forward per step
  and a second set of weights in memory; needed when the data changes during training.
* ``cached`` (`reference_logps`): run the initial model once over the whole dataset before
  training, store one number per completion with the example, and never touch π_ref again.
  Each step then costs only the policy's forward and backward, and the reference weights can be
  freed. The values are saved under ``$TRAINLAB_HOME/align/reference/`` keyed by everything they
  depend on (`reference_cache_key`): the model weights (and their dtypes), the tokenized data, the
  precision (autocast), the device (type and model), the logit chunking, the batch width (the
  padding) and the torch version; so a rerun (or another method on the same data and settings)
  skips even the one pass, and a change of any of them recomputes.

Both ways score under the same autocast as the policy's forward (``train.precision``): the frozen
copy runs inside the training step's autocast; the cached pass takes ``precision`` and enters the
same `trainlab.train.amp.autocast_context`. At step 0 the policy equals π_ref, so the margins
``(π_c − ρ_c) − (π_r − ρ_r)`` are then exactly 0 under bf16 too (with the reference computed in
fp32 against a bf16 policy they were not).

A third way, the same model with its PEFT adapters switched off, needs the PEFT component; it
plugs in as another object with the `FrozenReference.logps` interface.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.align.logprobs import sequence_logps
from trainlab.align.prefix_sharing import pair_sequence_logps
from trainlab.paths import trainlab_home
from trainlab.utils import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = "ref-v2"


class FrozenReference:
    """A frozen copy of a model that scores completions (sums of log-probs) without building a graph."""

    def __init__(self, model: nn.Module, *, chunk_size: int = 0, copy_weights: bool = True) -> None:
        self.model = copy.deepcopy(model) if copy_weights else model
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.chunk_size = chunk_size

    def to(self, device: torch.device | str) -> FrozenReference:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logps(self, batch: dict[str, Tensor], prefix: str = "", *, share_prefix: bool = False) -> Tensor:
        """Σ completion log-probs of each row of ``batch[prefix + "input_ids"]`` (labels -100 elsewhere);
        ``share_prefix``: a preference batch, its pairs packed (`trainlab.align.prefix_sharing`)."""
        # without a graph, chunking costs nothing: never hold more logits than the automatic chunk
        out = pair_sequence_logps(self.model, batch[prefix + "input_ids"], batch[prefix + "labels"],
                                  batch.get(prefix + "attention_mask"), chunk_size=self.chunk_size or -1,
                                  share_prefix=share_prefix)
        return out.sum


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        # the numpy view is hashed through the buffer protocol: no copy of the weights
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def device_identity(device: torch.device | str) -> str:
    """The device as far as numbers depend on it: the type, and for accelerators the model."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    return dev.type


def reference_cache_key(model_fp: str, data_fp: str, kind: str, *, precision: str, device: torch.device | str,
                        dtype: torch.dtype | str, chunk_size: int, batch_size: int, share_prefix: bool = False) -> str:
    """The cache key of a reference pass: every input its numbers depend on (module docstring)."""
    described = {"version": CACHE_VERSION, "kind": kind, "model": model_fp, "data": data_fp,
                 "precision": precision, "device": device_identity(device), "dtype": str(dtype),
                 "chunk_size": chunk_size, "batch_size": batch_size, "torch": torch.__version__}
    if share_prefix:  # packed pairs round differently in the last bits
        described["share_prefix"] = True
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def reference_cache_path(key: str, kind: str) -> Path:
    return trainlab_home() / "align" / "reference" / f"{kind}-{key}.pt"


@torch.no_grad()
def _score(model: nn.Module, dataset: Sequence[Any], collate: Callable[[list[Any]], dict[str, Tensor]],
           columns: Callable[[nn.Module, dict[str, Tensor]], Tensor], *, batch_size: int, device: torch.device,
           precision: str) -> Tensor:
    from trainlab.train.amp import autocast_context

    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device, precision):  # type: ignore[arg-type]
                out.append(columns(model, batch).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def reference_logps(model: nn.Module, dataset: Any, collate: Callable[[list[Any]], dict[str, Tensor]], *,
                    kind: str, batch_size: int = 32, chunk_size: int = 0, device: torch.device | str = "cpu",
                    precision: str = "fp32", cache: bool = True, share_prefix: bool = False
                    ) -> tuple[Tensor, dict[str, Any]]:
    """``[n, 2]`` reference log-probs for every example of ``dataset``, computed with ``model`` as it is now.

    ``kind="preference"``: columns (chosen, rejected) of a `PreferenceDataset`;
    ``kind="unpaired"``: (completion, mismatched KL completion) of a KTO `UnpairedDataset`.
    ``precision`` is the training run's (``train.precision``): the pass runs under the same autocast
    as the policy's forward; ``share_prefix``: preference pairs packed as the objective packs them
    (`trainlab.align.prefix_sharing`). With ``cache`` the result is read from / written to
    `reference_cache_path` under `reference_cache_key`. Returns the tensor and a small record
    (cache path, hit or miss, seconds, precision).
    """
    import time

    device = torch.device(device)
    t0 = time.perf_counter()
    path = None
    if cache:
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        key = reference_cache_key(model_fingerprint(model), dataset.fingerprint(), kind, precision=precision,
                                  device=device, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size,
                                  share_prefix=share_prefix and kind == "preference")
        path = reference_cache_path(key, kind)
    if path is not None and path.is_file():
        try:
            values = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(values.shape) == (len(dataset), 2):
                return values, {"cache": str(path), "hit": True, "seconds": time.perf_counter() - t0,
                                "precision": precision}
        except Exception:  # a damaged cache file is recomputed
            log.warning("ignoring unreadable reference cache %s", path)

    chunk_size = chunk_size or -1  # no graph here: chunks cost nothing, so never hold all logits

    def preference_columns(m: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        s = pair_sequence_logps(m, batch["input_ids"], batch["labels"], batch["attention_mask"],
                                chunk_size=chunk_size, share_prefix=share_prefix).sum
        b = s.shape[0] // 2
        return torch.stack([s[:b], s[b:]], dim=1)

    def unpaired_columns(m: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        s = sequence_logps(m, batch["input_ids"], batch["labels"], batch["attention_mask"], chunk_size=chunk_size).sum
        k = sequence_logps(m, batch["kl_input_ids"], batch["kl_labels"], batch["kl_attention_mask"],
                           chunk_size=chunk_size).sum
        return torch.stack([s, k], dim=1)

    columns = preference_columns if kind == "preference" else unpaired_columns
    values = _score(model, dataset, collate, columns, batch_size=batch_size, device=device, precision=precision)
    if path is not None:
        atomic_write(path, lambda tmp: torch.save(values, tmp))
    return values, {"cache": str(path) if path else None, "hit": False, "seconds": time.perf_counter() - t0,
                    "precision": precision}
