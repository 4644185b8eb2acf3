"""The embedded base model: pre-trained once per preset and cached.

Commands that need a model and get none (``trainlab sft|dpo|...|eval --preset P``, the labs) use
the base model of the same preset ``P`` (``tiny``, ``quick`` or ``full``; another name is a
`UserError`). It lives under ``$TRAINLAB_HOME/models/base-<key>/model`` where the key hashes the
exact config, so a change of the preset trains a new one instead of silently reusing a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path

from trainlab.config import RunConfig, load_config
from trainlab.paths import trainlab_home

log = logging.getLogger(__name__)


def base_model_config(preset: str = "quick") -> RunConfig:
    return load_config(preset=preset)


def base_model_dir(cfg: RunConfig) -> Path:
    """The cache folder for a base model trained with ``cfg``: the key hashes what shapes the model (the model,
    data and train sections; not the device, nor sections a pre-training run does not read, such as ``peft`` or
    ``dist``, so that adding a config section does not retrain every cached base model)."""
    described = cfg.model_dump(mode="json", include={"model", "data", "train"})
    described["train"].pop("device", None)
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]
    return trainlab_home() / "models" / f"base-{key}"


def publish_base_model(cfg: RunConfig, model_dir: Path) -> bool:
    """Copy a model trained with exactly the base config of a preset into the cache (the base lab
    does this, so later labs and commands of that preset reuse it instead of training it again).
    True if copied."""
    from trainlab.config import PRESETS

    described = cfg.model_dump(exclude={"train": {"device"}})
    if not any(described == base_model_config(p).model_dump(exclude={"train": {"device"}}) for p in PRESETS):
        return False
    root = base_model_dir(cfg)
    target = root / "model"
    if (target / "config.json").is_file():
        return False
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model_dir, tmp)
    tmp.rename(target)
    return True


def embedded_base_model(preset: str = "quick", *, quiet: bool = True) -> Path:
    """Path of the cached base model folder (HF format), training it first if it is not there.

    A file lock makes two processes asking at once train it only once.
    """
    from trainlab.recipes.pretrain import run_pretrain

    cfg = base_model_config(preset)
    root = base_model_dir(cfg)
    model_dir = root / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / "config.json").is_file():
            log.warning("training the embedded base model once (preset %s) into %s", preset, root)
            run_pretrain(cfg, root / "run", quiet=quiet)
            (root / "run" / "model").rename(model_dir)
    return model_dir
