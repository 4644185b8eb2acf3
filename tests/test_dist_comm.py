"""Communication volume: the ring formulas by hand, the CLI, and the meter on a real 2-process gloo run."""

from __future__ import annotations

import json
import sys
from unittest.mock import patch

import pytest
import torch
from torch import nn

from trainlab.cli import main
from trainlab.distributed.comm import (
    CommMeter,
    all_gather_bytes,
    allreduce_bytes,
    comm_result,
    reduce_scatter_bytes,
    seed_allreduce_check,
    strategy_volume,
)
from trainlab.errors import UserError
from trainlab.labs.distributed.runner import run_ranks


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with patch.object(sys, "argv", ["trainlab", *args]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ring_volumes_by_hand() -> None:
    # Ring all-reduce of S = 14 GB on 8 ranks: 7 reduce-scatter + 7 all-gather steps of S/8 each.
    s = 14e9
    assert allreduce_bytes(s, 8) == 2 * 7 * (s / 8) == 24.5e9
    assert reduce_scatter_bytes(s, 8) == all_gather_bytes(s, 8) == 7 * s / 8
    assert allreduce_bytes(s, 1) == 0  # alone, nothing is sent
    # ZeRO section 7: ZeRO-1/2 move what DDP moves; ZeRO-3 1.5x.
    ddp = strategy_volume("ddp", 7e9, 8, dtype="bf16").sent_bytes
    assert strategy_volume("zero2", 7e9, 8, dtype="bf16").sent_bytes == ddp
    assert strategy_volume("zero3", 7e9, 8, dtype="bf16").sent_bytes == pytest.approx(1.5 * ddp)
    # Megatron TP: 4 all-reduces of b*s*h per layer; hand value for b=1, s=4, h=8, 2 layers, fp32, p=2.
    tp = strategy_volume("tp", 1e6, 2, dtype="fp32", layers=2, batch=1, seq=4, hidden=8)
    assert tp.sent_bytes == 4 * 2 * (1 * 4 * 8 * 4)  # 2(p-1)/p = 1 at p=2
    with pytest.raises(UserError, match="--layers"):
        strategy_volume("tp", 1e6, 2)


def test_seed_formula_is_the_all_ranks_total() -> None:
    check = seed_allreduce_check(7e9, 8, "bf16")
    assert check["per_rank_ring"] == 24_500_000_000
    assert check["seed_2_p_minus_1_times_size"] == 196_000_000_000
    assert not check["seed_equals_per_rank"] and check["seed_equals_all_ranks_total"]


def test_calc_comm_cli_must_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["calc", "comm", "--params", "7e9", "--gpus", "8", "--dtype", "bf16", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["primitives_bytes_per_rank"]["all_reduce"] == 24_500_000_000
    assert "24,500,000,000" in doc["seed_check"]["verdict"]
    code, out, _ = cli(["calc", "comm", "--params", "7B", "--gpus", "8", "--bandwidth", "100"], capsys)
    assert code == 0 and "0.245" in out and "zero3" in out  # 24.5 GB at 100 GB/s
    code, _, err = cli(["calc", "comm", "--params", "7B", "--dtype", "fp7"], capsys)
    assert code == 2 and "fp7" in err
    assert comm_result(params="1e3", gpus=2, batch=1, seq=4, hidden=8, layers=2)["strategies"][-1]["strategy"] == "pp"


def _ddp_and_fsdp(rank: int, world: int) -> dict[str, object]:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False))

    out: dict[str, object] = {}
    x = torch.randn(4, 64)
    ddp = DistributedDataParallel(net())
    fsdp = net()
    for layer in fsdp:
        fully_shard(layer)
    fully_shard(fsdp)
    for name, model in (("ddp", ddp), ("fsdp", fsdp)):
        model(x).sum().backward()  # warm-up: DDP's first step rebuilds buckets
        with CommMeter(world) as meter:
            model(x).sum().backward()
        out[name] = {"summary": meter.summary(), "wire": meter.wire_total}
    return out


def test_meter_counts_ddp_and_fsdp_collectives_on_two_gloo_ranks() -> None:
    s = 2 * 64 * 64 * 4  # fp32 gradient bytes of the two layers
    for res in run_ranks(_ddp_and_fsdp, 2):
        ddp = res["ddp"]["summary"]
        assert ddp["all_reduce"]["calls"] == 1 and ddp["all_reduce"]["size_bytes"] == s  # one bucket
        # What left the process: the ring's 2(p-1)/p * S plus gloo's message headers (< 1 KiB a call).
        assert allreduce_bytes(s, 2) <= ddp["all_reduce"]["wire_bytes"] <= allreduce_bytes(s, 2) + 1024
        fsdp = res["fsdp"]["summary"]
        # Each layer gathered for forward and again for backward; its gradient reduce-scattered.
        assert fsdp["all_gather"]["calls"] == 4 and fsdp["all_gather"]["size_bytes"] == 2 * s
        assert fsdp["reduce_scatter"]["calls"] == 2 and fsdp["reduce_scatter"]["size_bytes"] == s
        assert all_gather_bytes(2 * s, 2) <= fsdp["all_gather"]["wire_bytes"] <= all_gather_bytes(2 * s, 2) + 4 * 1024
        # At least the ring's (p-1)/p * S; gloo (torch 2.13) sends an all-reduce's volume here (the lab shows it).
        assert fsdp["reduce_scatter"]["wire_bytes"] >= reduce_scatter_bytes(s, 2)
        assert res["fsdp"]["wire"] >= sum(v["wire_bytes"] for v in fsdp.values())
