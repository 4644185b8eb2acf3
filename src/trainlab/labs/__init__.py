"""The lab registry and runner.

A lab is a function ``run(ctx: LabContext) -> LabResult``: it configures components, measures,
writes its plots into ``ctx.out_dir`` and returns a typed result. What every lab shares (presets that
fail on unknown names, parts, CPU thread pinning, claims tables, run-folder slugs) is in
`trainlab.labs.common`. ``run_labs`` runs several, keeps
going when one fails (recording the failure), and rewrites the report after every lab so an
interrupted suite still leaves a readable report of what finished.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.env import EnvInfo, detect_env
from trainlab.errors import UserError
from trainlab.labs.common import pinned_threads, resolve_preset
from trainlab.results import LabResult, SuiteResult


@dataclass
class LabContext:
    out_dir: Path  # this lab's own folder, inside the suite folder
    suite_dir: Path
    preset: str
    device: str
    seed: int
    env: EnvInfo
    overrides: list[str] = field(default_factory=list)
    quiet: bool = False

    def rel(self, path: Path) -> str:
        """A path relative to the suite folder (how figures are referenced from the report)."""
        return str(Path(path).resolve().relative_to(self.suite_dir.resolve()))


@dataclass(frozen=True)
class LabSpec:
    name: str
    title: str
    seeds: str
    description: str
    module: str  # the module defining ``run(ctx) -> LabResult``
    # on a CPU, the lab runs with at most this many intra-op threads (None: torch's setting). 1 for the labs of the
    # ~1M-parameter embedded decoder (batches of a few hundred to two thousand tokens), where a second OpenMP thread
    # costs more in synchronisation than it adds: an SFT-sized step took 0.05 s of CPU with one thread and 1.1 s
    # with two (under load), and `make demo`'s quiet-machine times of these labs were above their one-thread CPU time
    cpu_threads: int | None = None

    def runner(self) -> Callable[[LabContext], LabResult]:
        return importlib.import_module(self.module).run


LABS: dict[str, LabSpec] = {
    spec.name: spec
    for spec in [
        LabSpec("base", "Base: pre-training the embedded decoder", "000, 002",
                "pre-training curve vs unigram entropy, sample generations, oracle accuracy per task",
                "trainlab.labs.base", cpu_threads=1),
        LabSpec("lab14", "Lab 1.4: mixed precision, loss scaling, accumulation, checkpointing, memory",
                "000, 002, 003", "fp32/fp16/bf16, loss-scale trace, accumulation vs large batch, checkpointing "
                "policies, memory estimated vs measured, batch sweep with OOM, optimized config, advisor",
                "trainlab.labs.lab14"),
        LabSpec("lab15", "Lab 1.5: FlashAttention, from the tiled algorithm to a fast Triton kernel", "000, 003",
                "exactness vs fp64, time and memory over sequence length, FA1 vs FA2 loop order, long-sequence "
                "training under a memory cap (flash, checkpointing and both, each measured), profiler breakdown, "
                "packed vs padded batches",
                "trainlab.labs.lab15"),
        LabSpec("lab16", "Lab 1.6: MHA, GQA and MQA with a KV cache: bytes, decode speed, quality, uptraining",
                "000, 003", "KV-cache bytes (published shapes analytic, our caches measured), prefill/per-token "
                "latency and tokens/s over batch and context (ours dynamic/static vs transformers), quality of "
                "MHA/GQA/MQA trained alike, MHA->GQA conversion (mean/first/random) and uptraining curves",
                "trainlab.labs.lab16"),
        LabSpec("lab17", "Lab 1.7: DPO after SFT, its variants and a β sweep", "000, 001, 003",
                "oracle accuracy base/SFT/DPO per task, DPO curves (loss, reward accuracy, margins, KL), win rate "
                "over SFT, sigmoid/IPO/hinge/robust, β sweep, cached vs frozen reference", "trainlab.labs.lab17",
                cpu_threads=1),
        LabSpec("lab18", "Lab 1.8: ORPO vs SFT then DPO, and SimPO", "000, 001, 003",
                "single-stage ORPO vs SFT+DPO vs SimPO: accuracy, wall time, training memory, curves; HF export "
                "loaded by transformers", "trainlab.labs.lab18", cpu_threads=1),
        LabSpec("peft", "PEFT: nine methods and a full fine-tune, same data and steps", "001",
                "LoRA, QLoRA, AdaLoRA, bottleneck, prefix, prompt, P-tuning, IA3, BitFit (+DoRA) vs full fine-tune: "
                "trainable parameters, memory, step time, accuracy, adapter size; LoRA rank sweep; QLoRA vs LoRA "
                "memory", "trainlab.labs.peft", cpu_threads=1),
        LabSpec("distributed", "Distributed training: DDP, FSDP2 (ZeRO-2/3), tensor parallel on 2 processes", "001",
                "each strategy vs one process (equivalence), memory per rank and bytes sent per rank measured vs the "
                "ZeRO and ring formulas, step time; calc comm at scale; plan vs the seed's decision tree",
                "trainlab.labs.distributed"),
        LabSpec("rlhf", "RLHF and RL with verifiable rewards: RM -> PPO, GRPO, DPO from one SFT model", "001, 003",
                "oracle accuracy of DPO, GRPO (oracle reward), RM -> PPO and RM -> GRPO from lab 1.7's SFT model; "
                "reward and KL curves, reward hacking, training time, peak memory and networks forwarded per step; "
                "DPO vs RLHF cost", "trainlab.labs.rlhf"),
    ]
}

PRESETS = ("tiny", "quick", "full")  # tiny: seconds, for tests


def resolve_lab_names(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return list(LABS)
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(n for n in LABS if n not in out)
        elif name not in LABS:
            raise UserError(f"unknown lab {name!r}; expected one of: {', '.join(LABS)} or all")
        elif name not in out:
            out.append(name)
    return out


def run_labs(
    names: list[str],
    *,
    out_dir: str | Path,
    preset: str = "quick",
    device: str = "auto",
    seed: int = 0,
    overrides: list[str] | None = None,
    quiet: bool = False,
    command: str = "",
    on_done: Callable[[LabResult], None] | None = None,
) -> SuiteResult:
    from trainlab.report import write_report
    from trainlab.train.device import resolve_device

    resolve_preset(dict.fromkeys(PRESETS), preset)  # an unknown preset is a UserError, before any lab runs
    lab_names = resolve_lab_names(names)
    dev = str(resolve_device(device))
    env = detect_env()
    suite_dir = Path(out_dir)
    suite_dir.mkdir(parents=True, exist_ok=True)
    suite = SuiteResult(env=env.to_dict(), command=command)
    for name in lab_names:
        spec = LABS[name]
        ctx = LabContext(out_dir=suite_dir / name, suite_dir=suite_dir, preset=preset, device=dev,
                         seed=seed, env=env, overrides=list(overrides or []), quiet=quiet)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            with pinned_threads(dev, spec.cpu_threads):
                result = spec.runner()(ctx)
        except UserError:
            raise
        except Exception as exc:  # a failed lab is recorded; the suite goes on
            result = LabResult(lab=name, title=spec.title, status="failed",
                               error=f"{type(exc).__name__}: {exc}", preset=preset, device=dev, seed=seed)
            (ctx.out_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        result.wall_time_s = time.perf_counter() - start
        result.env = env.to_dict()
        suite.labs.append(result)
        write_report(suite, suite_dir)
        if on_done is not None:
            on_done(result)
    return suite
