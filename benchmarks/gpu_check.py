"""Everything trainlab measures on a GPU, in one bounded run: the driver behind ``scripts/gpu_check.sh``.

    scripts/gpu_check.sh                      # on a machine with one NVIDIA GPU: <= 8 minutes
    scripts/gpu_check.sh --dry-run            # every step on tiny shapes on the CPU (Triton's interpreter)
    scripts/gpu_check.sh --only bench_attention tile_sweep --budget-s 200

Steps (each a subprocess with its own time limit; a failed or timed-out step is recorded and the run goes
on; the order puts the issue's must-show numbers first):

1. ``env``: torch, CUDA, the device's name and compute capability, Triton, flash-attn, ``nvidia-smi``.
2. ``attention_tests``: ``tests/test_flash_triton.py`` under pytest (on CUDA it runs the compiled kernels
   in fp32, fp16 and bf16: causal, GQA/MQA, ``Tq != Tk``, padding, sliding windows, varlen, deterministic
   backward, forward and backward against float64), JUnit XML kept.
3. ``bench_attention``: ``benchmarks/bench_attention.py`` on a reduced grid: bf16, head dims 64 and 128,
   causal and not, N = 1K ... 16K, MHA, our Triton kernel vs every SDPA backend (flash = FlashAttention-2,
   cuDNN, memory-efficient, math up to 4K) and flash-attn when it imports; forward and forward+backward.
4. ``attention_check``: ``benchmarks/attention_check.py``: the kernels at GPU-sized shapes (N up to 2K,
   ragged blocks, GPU tiles) in fp32/fp16/bf16 against float64, forward and backward.
5. ``tile_sweep``: ``benchmarks/tile_sweep.py``: a few tile configurations around the defaults, bf16
   causal N=8K, d=128 and 64.
6. ``labs``: ``trainlab run lab14 lab15 --preset quick --device cuda`` (lab 1.4's allocator figures, lab
   1.5 on CUDA).
7. ``bench_align``: ``benchmarks/bench_align.py --device cuda`` on one shape (``medium``), trainlab's DPO and
   ORPO against TRL's.

``--dry-run`` runs the same steps on the CPU with tiny settings (Triton through ``TRITON_INTERPRET=1``,
fp32/fp16; the labs' ``tiny`` preset): it checks the script, not the GPU, in well under a minute.

Output (``--out``, default ``$OUT`` or ``./gpu_check_out``): ``summary.json`` (every step's command, exit
status, wall seconds, log file, and the numbers each step produced: pass counts, the headline TFLOP/s rows),
``summary.md``, the step logs and result files. With ``--pack`` (the default when ``$OUT`` is set: the
device tool brings back at most 8 files) the work happens in a temporary folder and ``--out`` receives
``summary.json``, ``summary.md`` and ``gpu_check.tar.gz`` (everything), rewritten after every step so that a
run cut short still leaves what it measured. ``scripts/gpu_results.py`` turns ``summary.json`` into the rows
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 470.0  # the whole run, inside the 8 minutes with room for start-up and packing

_ENV_PROBE = r"""
import json, os, shutil, subprocess, torch
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count)
else:
    info["device"] = "cpu"
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:
    info["triton"] = f"missing: {exc}"
try:
    import flash_attn
    info["flash_attn"] = flash_attn.__version__
except Exception as exc:
    info["flash_attn"] = f"not importable: {type(exc).__name__}"
for mod in () if os.environ.get("GPU_CHECK_PROBE_LIGHT") else ("transformers", "trl", "pydantic", "datasets"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as exc:
        info[mod] = f"missing: {type(exc).__name__}"
if shutil.which("nvidia-smi"):
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
print(json.dumps(info))
"""


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    produces: str | None = None  # a result file (relative to the work folder) the summary reads


def steps(py: str, work: Path, dry: bool) -> list[Step]:
    """The steps, GPU or dry-run settings."""
    interp = {"TRITON_INTERPRET": "1"} if dry else {}
    dev = "cpu" if dry else "cuda"
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_flash_triton.py",
             f"--junitxml={work / 'attention_tests.xml'}"]
    if dry:  # one case under the interpreter: the step's plumbing, not the kernels' coverage (make test has it)
        tests += ["-k", "test_kernels_match_float64_reference and gqa and not mqa"]
    bench = [py, "benchmarks/bench_attention.py", "--device", dev, "--out", str(work / "bench_attention")]
    if dry:
        bench += ["--seqs", "32", "--head-dims", "16", "--gqa", "1", "--tokens", "32", "--model-dim", "32",
                  "--warmup", "0", "--repeats", "1", "--interpret", "--backends", "triton", "sdpa", "flash_attn"]
    else:
        bench += ["--seqs", "1024", "2048", "4096", "8192", "16384", "--head-dims", "64", "128", "--gqa", "1",
                  "--causal", "both", "--warmup", "3", "--repeats", "10",
                  "--backends", "triton", "flash_attn", "sdpa:flash", "sdpa:cudnn", "sdpa:efficient", "sdpa:math"]
    check = [py, "benchmarks/attention_check.py", "--device", dev, "--out", str(work / "attention_check.json")]
    if dry:
        check += ["--cases", "causal", "window-padding", "varlen-causal-gqa"]
    sweep = [py, "benchmarks/tile_sweep.py", "--device", dev, "--out", str(work / "tile_sweep.json"),
             "--budget-s", "10" if dry else "45"]
    labs = [py, "-m", "trainlab.cli", "run", "lab14", "lab15", "--preset", "tiny" if dry else "quick",
            "--device", dev, "--out", str(work / "labs")]
    align = [py, "benchmarks/bench_align.py", "--device", dev, "--out", str(work / "bench_align"),
             "--cases", "trainlab-dpo", *([] if dry else ["trl-dpo", "trainlab-orpo", "trl-orpo"])]
    align += (["--shape", "tasks", "--steps", "2", "--batch", "2", "--hidden", "32", "--layers", "1", "--vocab",
               "2048"] if dry else ["--shape", "medium"])
    return [
        Step("env", [py, "-c", _ENV_PROBE], 30 if dry else 45, {"GPU_CHECK_PROBE_LIGHT": "1"} if dry else {},
             produces="env.json"),
        Step("attention_tests", tests, 40 if dry else 75, interp, produces="attention_tests.xml"),
        Step("bench_attention", bench, 40 if dry else 120, interp, produces="bench_attention"),
        Step("attention_check", check, 40 if dry else 90, interp, produces="attention_check.json"),
        Step("tile_sweep", sweep, 40 if dry else 60, interp, produces="tile_sweep.json"),
        Step("labs", labs, 60 if dry else 100, produces="labs/results.json"),
        Step("bench_align", align, 60 if dry else 75, produces="bench_align"),
    ]


def _run_step(step: Step, work: Path, limit: float) -> dict[str, Any]:
    log = work / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rec: dict[str, Any] = {"name": step.name, "command": " ".join(step.argv if step.name != "env" else
                                                                  [*step.argv[:2], "<probe>"]),
                           "timeout_s": round(limit, 1), "log": str(log.relative_to(work))}
    start = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=fh if step.name != "env" else subprocess.PIPE,
                                stderr=subprocess.STDOUT if step.name != "env" else fh, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
            rec["rc"] = proc.returncode
            rec["status"] = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the step and whatever it started
            out, _ = proc.communicate()
            rec["rc"], rec["status"] = None, "timeout"
    rec["wall_s"] = round(time.monotonic() - start, 1)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the step's processes, waited for (user + system)
    rec["cpu_s"] = round(cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime, 1)
    if step.name == "env" and out:
        (work / "env.json").write_text(out, encoding="utf-8")
        log.write_text(log.read_text(encoding="utf-8") + out, encoding="utf-8")
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:]
    if rec["status"] != "ok":
        rec["log_tail"] = tail
    return rec


# ---- reading what each step produced -----------------------------------------------------------------


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict[str, Any] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed_tests": failed}


def results(work: Path) -> dict[str, Any]:
    """The numbers the steps wrote, in the summary's shape (absent when a step did not produce them)."""
    out: dict[str, Any] = {}
    env = _json(work / "env.json")
    if env:
        out["env"] = env
    tests = _junit(work / "attention_tests.xml")
    if tests:
        out["attention_tests"] = tests
    bench = [d for f in sorted((work / "bench_attention").glob("attention_*.json")) if (d := _json(f))]
    if bench:
        rows = bench[-1]["rows"]
        out["bench_attention"] = {"device": bench[-1]["device"], "rows": rows,
                                  "settings": bench[-1].get("settings", {})}
    check = _json(work / "attention_check.json")
    if check:
        rows = check["rows"]
        out["attention_check"] = {"passed": sum(bool(r["ok"]) for r in rows), "total": len(rows), "rows": rows}
    sweep = _json(work / "tile_sweep.json")
    if sweep:
        out["tile_sweep"] = sweep
    labs = _json(work / "labs" / "results.json")
    if labs:
        out["labs"] = [{"lab": r.get("lab"), "status": r.get("status"), "wall_time_s": r.get("wall_time_s"),
                        "error": r.get("error")} for r in labs.get("labs", [])]
    align = [d for f in sorted((work / "bench_align").glob("align_*.json")) if (d := _json(f))]
    if align:
        out["bench_align"] = align[-1]
    return out


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# gpu_check ({'dry run' if summary['dry_run'] else 'GPU'}): {summary.get('device', '?')}", "",
             f"started {summary['started_at']}, {summary['wall_s']:.0f} s in all", "",
             "| step | status | wall s | command |", "| --- | --- | --- | --- |"]
    for s in summary["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s.get('wall_s', 0):.0f} | `{s['command'][:120]}` |")
    return "\n".join(lines) + "\n"


def _pack(work: Path, out: Path) -> None:
    tmp = out / "gpu_check.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname="gpu_check")
    tmp.replace(out / "gpu_check.tar.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on tiny shapes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu_check_out")
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                        help="leave only summary.json, summary.md and gpu_check.tar.gz in --out (default: when $OUT "
                             "is set)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps")
    parser.add_argument("--skip", nargs="+", default=(), help="skip these steps")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-clock budget of the whole run")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the steps run under")
    args = parser.parse_args(argv)
    out = (args.out or Path(os.environ.get("OUT") or "gpu_check_out")).resolve()
    pack = args.pack if args.pack is not None else bool(os.environ.get("OUT")) and args.out is None
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if pack else out
    plan = steps(args.python, work, args.dry_run)
    names = [s.name for s in plan]
    for name in [*(args.only or ()), *args.skip]:
        if name not in names:
            parser.error(f"unknown step {name!r}; steps: {', '.join(names)}")
    if not args.dry_run:
        probe = subprocess.run([args.python, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            print("gpu_check: no CUDA device visible to " + args.python + " (use --dry-run on a CPU)", file=sys.stderr)
            return 2
    start = time.monotonic()
    summary: dict[str, Any] = {"dry_run": args.dry_run, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                               "budget_s": args.budget_s, "steps": [], "wall_s": 0.0}
    for step in plan:
        if (args.only and step.name not in args.only) or step.name in args.skip:
            continue
        left = args.budget_s - (time.monotonic() - start)
        if left < 5:
            rec = {"name": step.name, "command": " ".join(step.argv), "status": "not run: budget spent", "wall_s": 0}
        else:
            print(f"gpu_check: {step.name} (limit {min(step.timeout_s, left):.0f} s)", file=sys.stderr, flush=True)
            rec = _run_step(step, work, min(step.timeout_s, left))
            print(f"gpu_check: {step.name}: {rec['status']} in {rec['wall_s']} s (CPU {rec.get('cpu_s')} s)",
                  file=sys.stderr, flush=True)
        summary["steps"].append(rec)
        summary["wall_s"] = round(time.monotonic() - start, 1)
        summary["results"] = results(work)
        summary["device"] = summary["results"].get("env", {}).get("device", "?")
        text = json.dumps(summary, indent=2) + "\n"
        for folder in {work, out}:
            (folder / "summary.json").write_text(text, encoding="utf-8")
            (folder / "summary.md").write_text(_markdown(summary), encoding="utf-8")
        if pack:
            _pack(work, out)
    if pack:
        shutil.rmtree(work, ignore_errors=True)
    failed = [s["name"] for s in summary["steps"] if s["status"] != "ok"]
    print(f"gpu_check: {len(summary['steps']) - len(failed)}/{len(summary['steps'])} steps ok"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; summary: {out / 'summary.json'}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
