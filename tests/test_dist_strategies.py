"""DDP, FSDP2 (ZeRO-3) and ZeRO-2 on 2 gloo processes train exactly as one process on the same global batch.

The reference is the ordinary single-process `Trainer` (no `trainlab.distributed` code runs); the
distributed runs use the same loop with ``dist.strategy`` set. Examples have unequal lengths and
prompt masks, so the ranks' token counts differ (the global count normalises the loss); accumulation
is 2 micro-batches and clipping at 0.05 scales every step (global norm). One spawn of 2 processes
runs the three strategies, then checks checkpoints: an FSDP run stopped at step 2 (DCP checkpoint)
resumes on 2 ranks and, in this process, on 1, both ending with the uninterrupted run's weights; a
one-process ``checkpoint.pt`` resumes on 2 FSDP ranks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from _dist import STEPS, outcome, rel_diff, spawn, trainer

from trainlab.config import DistConfig
from trainlab.distributed.checkpoint import DCP_NAME

STRATEGIES = ("ddp", "fsdp", "zero2")


def _worker(rank: int, tmp: Path) -> None:
    from trainlab.distributed import env

    ctx = env.init(DistConfig(strategy="ddp"), "cpu")
    assert ctx is not None and ctx.world == 2 and ctx.dp_world == 2
    assert float(env.dp_mean(torch.tensor(float(rank)))) == 0.5  # a batch statistic averaged over ranks (KTO's z0)
    for name in STRATEGIES:
        ctx.strategy = name  # one process group, three strategies in turn
        tr = trainer(tmp / name)
        result = tr.fit()
        got = outcome(tr, result)
        if rank == 0:
            torch.save(got, tmp / f"{name}.pt")
    # checkpoints: FSDP stopped at step 2, then resumed on 2 ranks (a copy: this process resumes another copy)
    ctx.strategy = "fsdp"
    tr = trainer(tmp / "ck", stop_at=2, keep_checkpoint=True)
    tr.fit()
    ctx.barrier()
    if rank == 0:
        for copy in ("ck1", "ck2"):
            shutil.copytree(tmp / "ck", tmp / copy)
    ctx.barrier()
    tr = trainer(tmp / "ck2")
    result = tr.fit(resume=True)
    got = outcome(tr, result)
    if rank == 0:
        torch.save(got | {"resumed_from": result.resumed_from}, tmp / "resume2.pt")
    # a one-process checkpoint.pt (written by the test) resumed on 2 FSDP ranks
    tr = trainer(tmp / "file")
    result = tr.fit(resume=True)
    got = outcome(tr, result)
    if rank == 0:
        torch.save(got | {"resumed_from": result.resumed_from}, tmp / "from_file.pt")


def test_strategies_equal_one_process_and_resume_across_world_sizes(tmp_path: Path) -> None:
    reference = trainer(tmp_path / "one")
    ref = outcome(reference, reference.fit())
    trainer(tmp_path / "file", stop_at=2, keep_checkpoint=True).fit()  # one process stops at step 2
    spawn(_worker, 2, tmp_path)
    for name in STRATEGIES:
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert len(got["loss"]) == STEPS
        torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-5, atol=0, msg=name)
        torch.testing.assert_close(got["grad_norm"], ref["grad_norm"], rtol=1e-5, atol=0, msg=name)
        assert min(ref["grad_norm"]) > 0.05  # clipping scaled every step
        assert rel_diff(got["weights"], ref["weights"]) < 1e-5, name
        # the weights moved: equal to the reference, not to the initial model
        assert rel_diff(got["weights"], trainer(tmp_path / "init").model.state_dict()) > 1e-3

    # 2 ranks saved at step 2 (a DCP folder); 2 ranks resumed to step 4
    assert (tmp_path / "ck" / DCP_NAME / ".metadata").is_file()
    assert not (tmp_path / "ck" / "checkpoint.pt").exists()
    two = torch.load(tmp_path / "resume2.pt", weights_only=True)
    assert two["resumed_from"] == 2
    assert rel_diff(two["weights"], ref["weights"]) < 1e-5
    # ... and 1 process resumes the same checkpoint to step 4
    one = trainer(tmp_path / "ck1")
    result = one.fit(resume=True)
    assert result.resumed_from == 2 and result.steps == STEPS
    assert rel_diff(outcome(one, result)["weights"], ref["weights"]) < 1e-5
    # it wrote a single-process checkpoint and removed the distributed one
    assert (tmp_path / "ck1" / "checkpoint.pt").is_file() and not (tmp_path / "ck1" / DCP_NAME).exists()
    # and the other way: a one-process checkpoint.pt resumed on 2 FSDP ranks (then saved as checkpoint.dcp)
    from_file = torch.load(tmp_path / "from_file.pt", weights_only=True)
    assert from_file["resumed_from"] == 2
    assert rel_diff(from_file["weights"], ref["weights"]) < 1e-5
    assert (tmp_path / "file" / DCP_NAME).is_dir() and not (tmp_path / "file" / "checkpoint.pt").exists()
