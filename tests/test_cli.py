"""The command line as a user meets it: exit codes, one-line errors, --json output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # the session's TRAINLAB_HOME (conftest): the embedded tokenizer, data and base model are built once
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("TRAINLAB_DEBUG", None)
    return env


def trainlab(*args: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = _env()
    return subprocess.run([sys.executable, "-m", "trainlab.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def start(*args: str, tmp_path: Path) -> subprocess.Popen[str]:
    """A command running in the background (to signal or kill it)."""
    env = _env()
    return subprocess.Popen([sys.executable, "-m", "trainlab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def wait_for_checkpoint(proc: subprocess.Popen[str], path: Path, timeout: float = 240) -> int:
    """Poll until ``path`` holds a checkpoint; return its step."""
    from trainlab.train.checkpoint import read_checkpoint_meta

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.is_file():
            try:
                return int(read_checkpoint_meta(path)["step"])
            except (OSError, RuntimeError, EOFError):  # being replaced at this instant: look again
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint at {path} within {timeout} s")


# ---- usage errors: one line, exit 2, never a traceback --------------------------------------------

@pytest.mark.parametrize(("args", "needles"), [
    (["dpoo"], ["No such command 'dpoo'", "dpo", "trainlab --help"]),
    (["dpo", "--no-such-option"], ["No such option: --no-such-option", "trainlab dpo --help"]),
    (["pretrain", "--max-steps", "abc"], ["--max-steps", "valid integer", "trainlab pretrain --help"]),
    (["pretrain", "--max-steps"], ["--max-steps", "requires an argument"]),
    (["run"], ["Missing argument", "lab_names"]),
    (["calc", "zero"], ["Missing option", "--params"]),
    (["calc", "nope"], ["No such command 'nope'"]),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    proc = trainlab(*args, tmp_path=tmp_path)
    assert_one_line_error(proc, *needles)
    assert proc.stdout == ""


def test_version_and_bare_help_exit_0(tmp_path: Path) -> None:
    from trainlab import __version__

    proc = trainlab("--version", tmp_path=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"trainlab {__version__}", proc
    for args in ([], ["calc"]):
        proc = trainlab(*args, tmp_path=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", proc
        assert proc.stdout.startswith("Usage: trainlab") and "Commands" in proc.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    proc = trainlab("pretrain", "--config", "does-not-exist.yaml", tmp_path=tmp_path)
    assert_one_line_error(proc, "does-not-exist.yaml", "not found")


def test_unknown_override_key(tmp_path: Path) -> None:
    proc = trainlab("pretrain", "train.lr_rate=1e-3", tmp_path=tmp_path)
    assert_one_line_error(proc, "train.lr_rate", "unknown key", "train.lr")


def test_bad_value_in_config_file_names_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  dim: 64\ntrain:\n  batch_size: -3\n")
    proc = trainlab("pretrain", "--config", str(cfg), tmp_path=tmp_path)
    assert_one_line_error(proc, f"{cfg}:4", "train.batch_size", "-3", "greater than 0")


def test_missing_data_file(tmp_path: Path) -> None:
    proc = trainlab("pretrain", "--preset", "tiny", "--data", "nope.jsonl", tmp_path=tmp_path)
    assert_one_line_error(proc, "nope.jsonl")


def test_malformed_data_line(tmp_path: Path) -> None:
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a fine line of text"}\n{"text": 5}\n')
    proc = trainlab("pretrain", "--preset", "tiny", "--data", str(data), tmp_path=tmp_path)
    assert_one_line_error(proc, f"{data}:2", "text")


def test_cuda_requested_without_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = trainlab("pretrain", "--preset", "tiny", "--device", "cuda", tmp_path=tmp_path)
    assert_one_line_error(proc, "cuda")


def test_unknown_lab(tmp_path: Path) -> None:
    proc = trainlab("run", "nosuchlab", tmp_path=tmp_path)
    assert_one_line_error(proc, "nosuchlab", "base")


def test_env_json_has_the_documented_keys(tmp_path: Path) -> None:
    proc = trainlab("env", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("torch_version", "device", "cuda_available", "gpu_name", "compute_capability", "bf16_supported",
                "fp16_supported", "triton_available", "flash_attn_available", "cpu_count", "memory_bytes"):
        assert key in info
    assert info["cpu_count"] >= 1 and info["memory_bytes"] > 0


def test_json_stdout_is_the_document_alone(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    """A library that prints while a command runs (DeepSpeed's 'Setting accelerator to CPU' on the first model load
    once it is installed) broke every --json document; its lines go to stderr now."""
    import trainlab.env
    from trainlab.cli import run_cli

    detect = trainlab.env.detect_env

    def noisy() -> object:
        print("[real_accelerator.py:254:get_accelerator] Setting accelerator to CPU")
        return detect()

    monkeypatch.setattr(trainlab.env, "detect_env", noisy)
    assert run_cli(["env", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["cpu_count"] >= 1 and "Setting accelerator" in err
    assert run_cli(["env"]) == 0  # without --json, stdout is the command's own
    assert "Setting accelerator" in capsys.readouterr().out
    assert sys.stdout is sys.__stdout__ or sys.stdout is not sys.stderr  # restored


def test_labs_json_lists_base(tmp_path: Path) -> None:
    proc = trainlab("labs", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [lab["name"] for lab in json.loads(proc.stdout)]
    assert "base" in names


def test_pretrain_then_generate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "6", "--json",
                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 6 and (out / "model" / "config.json").is_file()
    assert (out / "model" / "tokenizer.json").is_file() and (out / "metrics.jsonl").is_file()
    proc = trainlab("generate", "--model", str(out / "model"), "--prompt", "12+3=", "--prompt", "The cat",
                    "--max-new-tokens", "5", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["prompt"] for r in rows] == ["12+3=", "The cat"]
    assert all(isinstance(r["completion"], str) for r in rows)
    # plain output: prompt + completion as text, no markup (ours shown or a user's [tag] eaten)
    proc = trainlab("generate", "--model", str(out / "model"), "--prompt", "The [b]cat[/b]", "--max-new-tokens",
                    "5", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The [b]cat[/b]") and "[bold]" not in proc.stdout + proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    assert not (out / "checkpoint.pt").exists()  # a finished run releases its checkpoint (train.keep_checkpoint)


def test_pretrain_on_user_text(tmp_path: Path) -> None:
    """User text with no tokenizer: a BPE is trained on it and saved with the model."""
    from trainlab.data.corpus import generate_corpus

    data = tmp_path / "texts.txt"
    data.write_text("\n\n".join(generate_corpus(300, seed=5)) + "\n")
    out = tmp_path / "mine"
    proc = trainlab("pretrain", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "3",
                    "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 3 and str(data) in summary["data"]["tokenizer"]
    assert (out / "model" / "tokenizer.json").is_file()


# ---- nothing lost -------------------------------------------------------------------------------

def test_resume_needs_a_checkpoint_or_resume_or_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--resume", tmp_path=tmp_path)
    assert_one_line_error(proc, "--resume: no checkpoint in", str(out), "--resume-or-start")
    assert not out.exists()
    proc = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "2", "--resume-or-start",
                    "train.keep_checkpoint=true", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resumed_from"] is None and (out / "checkpoint.pt").is_file()
    proc = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "3", "--resume-or-start",
                    "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resumed_from"] == 2 and not (out / "checkpoint.pt").exists()


def test_resume_on_other_data_is_refused(tmp_path: Path) -> None:
    from trainlab.data.corpus import generate_corpus

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n\n".join(generate_corpus(300, seed=5)) + "\n")
    b.write_text("\n\n".join(generate_corpus(300, seed=6)) + "\n")
    out = tmp_path / "run"
    proc = trainlab("pretrain", "--preset", "tiny", "--data", str(a), "--out", str(out), "--max-steps", "2",
                    "train.keep_checkpoint=true", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    proc = trainlab("pretrain", "--preset", "tiny", "--data", str(b), "--out", str(out), "--max-steps", "4",
                    "--resume", tmp_path=tmp_path)
    assert_one_line_error(proc, "cannot resume", "on other data", "--force")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing written


def test_out_containing_the_input_model_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "sft" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    for out in (tmp_path / "sft", model):
        proc = trainlab("dpo", "--model", str(model), "--out", str(out), "--preset", "tiny", tmp_path=tmp_path)
        assert_one_line_error(proc, f"--out {out}", "--model folder", "write over its input")
    inside = model / "dpo"  # one rule with export and convert: not into the input either
    proc = trainlab("dpo", "--model", str(model), "--out", str(inside), "--preset", "tiny", tmp_path=tmp_path)
    assert_one_line_error(proc, f"--out {inside}", "inside the --model folder", "write into its input")
    assert sorted(p.name for p in (tmp_path / "sft").rglob("*")) == ["config.json", "model"]  # nothing written


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_saves_says_so_and_exits_130(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = start("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "100000",
                 "train.save_every=5", tmp_path=tmp_path)
    wait_for_checkpoint(proc, out / "checkpoint.pt")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({sig.name}) at step") and "--resume" in last, stderr
    assert "saved model" not in stderr and not (out / "model").exists()
    from trainlab.train.checkpoint import read_checkpoint_meta

    step = int(read_checkpoint_meta(out / "checkpoint.pt")["step"])
    assert f"at step {step} of 100000" in last  # the checkpoint holds the step it stopped at
    if sig == signal.SIGINT:  # forgetting --resume does not overwrite the unfinished run
        proc3 = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", "3", tmp_path=tmp_path)
        assert_one_line_error(proc3, "unfinished run", f"step {step} of 100000", "--resume", "--force")
        assert int(read_checkpoint_meta(out / "checkpoint.pt")["step"]) == step
    proc2 = trainlab("pretrain", "--preset", "tiny", "--out", str(out), "--max-steps", str(step + 2), "--resume",
                     "--json", tmp_path=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    summary = json.loads(proc2.stdout)
    assert summary["resumed_from"] == step and summary["steps"] == step + 2


def test_sigkill_then_resume_continues_an_alignment_run(tmp_path: Path) -> None:
    """Alignment commands checkpoint periodically by default too (train.save_every of the preset, or
    save_every_minutes), so a killed run continues where its last checkpoint was."""
    out = tmp_path / "sft"
    proc = start("sft", "--preset", "tiny", "--out", str(out), "--max-steps", "100000", "train.save_every=2",
                 tmp_path=tmp_path)
    wait_for_checkpoint(proc, out / "checkpoint.pt")
    proc.kill()
    proc.communicate(timeout=60)
    from trainlab.train.checkpoint import read_checkpoint_meta

    step = int(read_checkpoint_meta(out / "checkpoint.pt")["step"])  # the last one written before the kill
    assert step >= 2 and not (out / "model").exists()
    proc = trainlab("sft", "--preset", "tiny", "--out", str(out), "--max-steps", str(step + 2), "--resume",
                    "train.save_every=2", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from step {step}" in proc.stderr
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == step + 2  # one history, no step twice
    assert (out / "model").is_dir() and not (out / "checkpoint.pt").exists()


# ---- no deprecation warnings from our calls into transformers / torch ------------------------------

def test_hf_model_commands_raise_no_future_or_deprecation_warning(tmp_path: Path) -> None:
    """Warnings are errors here (not hidden): a deprecated API name in our calls fails the command."""
    from _hf_tiny import hf_model_dir

    model = hf_model_dir(tmp_path / "qwen3", "qwen3")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "chosen": f" {i + 1}.", "rejected": f" {i}."})
                            + "\n" for i in range(12)))
    env = dict(_env(), PYTHONWARNINGS="error::FutureWarning,error::DeprecationWarning")
    strict = [sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning", "-m", "trainlab.cli"]
    for args in (["dpo", "--model", str(model), "--data", str(data), "--out", "dpo", "--preset", "tiny",
                  "--max-steps", "1", "model.checkpointing=full"],
                 ["generate", "--model", "dpo/model", "--prompt", "What is", "--max-new-tokens", "3"]):
        proc = subprocess.run([*strict, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Warning" not in proc.stderr, proc.stderr
