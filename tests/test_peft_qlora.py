"""QLoRA: our NF4 against the paper's code book and against bitsandbytes (bit-exact where it is installed), the
storage it takes, and LoRA on an NF4 base (= LoRA on the dequantized weights; PEFT loads its adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests._hf_tiny import hf_model_dir, make_model, make_tokenizer
from tests._tiny import tiny_decoder
from trainlab.model.protocol import load_model
from trainlab.peft import PeftConfig, adapters_disabled, apply_peft, load_adapter, merge, save_adapter
from trainlab.peft.nf4 import (
    NF4_CODE,
    dequantize_absmax,
    dequantize_nf4,
    dynamic_code,
    nf4_code_from_normal,
    quantize_nf4,
)
from trainlab.peft.qlora import NF4Linear


def test_nf4_code_is_the_papers_normal_quantiles() -> None:
    code = torch.tensor(NF4_CODE, dtype=torch.float64)
    assert code.numel() == 16 and code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1
    assert (code.diff() > 0).all()
    torch.testing.assert_close(nf4_code_from_normal(), code, atol=2e-7, rtol=0)  # the table is float32
    # 8 positive and 7 negative values: the asymmetric code with an exact zero
    assert int((code > 0).sum()) == 8 and int((code < 0).sum()) == 7


def test_nf4_roundtrip_error_and_storage() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 1024, generator=g) * 0.02
    for dq, bits in ((False, 4 + 32 / 64), (True, 4 + 8 / 64 + 32 / (64 * 256))):
        q = quantize_nf4(w, 64, dq)
        d = dequantize_nf4(q)
        # every value lands on its nearest code point: |c·a' − w| <= a·(largest half gap) + |a' − a|, with a the
        # block's absmax and a' its value after the 8-bit double quantization
        absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
        absmax_dq = dequantize_absmax(q)[:, None]
        assert ((absmax_dq - absmax).abs() <= 0.01 * absmax).all()
        half_gap = float(torch.tensor(NF4_CODE).diff().max()) / 2
        err = (d - w).reshape(-1, 64).abs()
        assert (err <= absmax * half_gap + (absmax_dq - absmax).abs() + 1e-7).all()
        assert q.bits_per_param() == pytest.approx(bits + (32 / w.numel() if dq else 0), rel=1e-9)
    # double quantization saves ~0.373 bit per parameter (the QLoRA paper's 0.37)
    saved = quantize_nf4(w, 64, False).bits_per_param() - quantize_nf4(w, 64, True).bits_per_param()
    assert saved == pytest.approx(0.373, abs=1e-3)


@pytest.mark.slow  # importing bitsandbytes takes ~5-10 s on a loaded CPU (once per process)
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_matches_bitsandbytes(double_quant: bool) -> None:
    bnb = pytest.importorskip("bitsandbytes.functional")
    # bitsandbytes torch.compiles its CPU dequantization per shape (minutes on a loaded CPU): run it eagerly
    with torch._dynamo.config.patch(disable=True):
        _compare_with_bitsandbytes(bnb, double_quant)


def _compare_with_bitsandbytes(bnb, double_quant: bool) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(dynamic_code(), bnb.create_dynamic_map(), atol=0, rtol=0)
    for shape in ((96, 130), (5, 64 * 300 + 1)):  # odd sizes: a partial last block; > 256 absmax blocks
        w = torch.randn(*shape, generator=g) * 0.05
        q = quantize_nf4(w, 64, double_quant)
        packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        assert torch.equal(q.packed, packed.reshape(-1))  # the same 4-bit indices, packed the same way
        theirs = bnb.dequantize_4bit(packed, state)
        if not double_quant:
            torch.testing.assert_close(q.absmax, state.absmax, atol=0, rtol=0)
            torch.testing.assert_close(dequantize_nf4(q), theirs, atol=0, rtol=0)
            continue
        torch.testing.assert_close(q.offset, state.offset, atol=0, rtol=0)
        torch.testing.assert_close(q.absmax2, state.state2.absmax, atol=0, rtol=0)
        # 8-bit absmax codes: ours round to the nearest code value (bitsandbytes' reference kernel); its CPU
        # kernel breaks exact ties (|difference| < 1e-6) the other way in a handful of blocks: one code step
        differ = q.absmax_q != state.absmax
        assert int(differ.sum()) <= max(1, differ.numel() // 100)
        assert ((q.absmax_q.int() - state.absmax.int()).abs() <= 1).all()
        mine = dequantize_nf4(q)
        same = (~differ).repeat_interleave(64)[: w.numel()].view(w.shape)
        torch.testing.assert_close(mine[same], theirs[same], atol=1e-7, rtol=1e-6)
        assert (mine - theirs).abs().max() <= 0.02 * float(q.absmax2.max())


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(2))


def test_qlora_is_lora_on_the_dequantized_base_and_loads_in_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    model = tiny_decoder(0, dim=64)
    fp32_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "proj" in n)
    cfg = PeftConfig(method="qlora", r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], init_seed=0)
    info = apply_peft(model, cfg)
    assert info is not None and info.notes
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 2 * 7  # every projection, not only the adapted ones
    nf4_bytes = sum(m.storage_bytes() for m in nf4)
    assert nf4_bytes / fp32_bytes == pytest.approx((4 + 8 / 64) / 32, rel=0.01)  # 4.127 of 32 bits (tiny matrices)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))

    # the reference: the float decoder holding the dequantized weights, exported to transformers, + PEFT
    deq = tiny_decoder(0, dim=64)
    with torch.no_grad():
        for path, m in model.named_modules():
            if isinstance(m, NF4Linear):
                deq.get_submodule(path.removesuffix(".base_layer")).weight.copy_(m.dequantize())
    save_adapter(model, tmp_path / "adapter")
    hf = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(deq.save_pretrained(tmp_path / "deq")),
                                        str(tmp_path / "adapter")).eval()
    ids = _ids(48)
    model.eval()
    with torch.no_grad():
        logits = model(ids)
        torch.testing.assert_close(logits, hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        with adapters_disabled(model):
            torch.testing.assert_close(model(ids), deq(ids), atol=1e-5, rtol=1e-5)
        again = tiny_decoder(0, dim=64)
        load_adapter(again, tmp_path / "adapter")  # trainlab_peft.json says qlora: the base is quantized again
        assert sum(isinstance(m, NF4Linear) for m in again.modules()) == 14
        torch.testing.assert_close(again.eval()(ids), logits, atol=1e-6, rtol=1e-6)
        merge(model)
        assert not any(isinstance(m, NF4Linear) for m in model.modules())
        torch.testing.assert_close(model(ids), logits, atol=1e-5, rtol=1e-5)


def test_qlora_sft_run_on_gpt2_merges_into_conv1d(tmp_path: Path) -> None:
    import json

    from trainlab.align.config import align_config
    from trainlab.recipes.align import run_alignment

    gpt2 = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + 1 =", "completion": f" {i + 1}"}) + "\n"
                            for i in range(8)), encoding="utf-8")
    cfg = align_config("sft", preset="tiny", model=gpt2, overrides=[
        "train.device=cpu", "train.max_steps=2", "train.batch_size=4", "train.eval_every=0", "train.lr=1e-2",
        f"align_data.source={data}", "peft.method=qlora", "peft.r=4", "peft.merge=true"])
    run = run_alignment("sft", cfg, gpt2, tmp_path / "run", quiet=True, evaluate_oracle=False)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    merged = load_model(tmp_path / "run" / "model")
    policy = run.model.eval()
    ids = _ids(200)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), policy(ids), atol=1e-5, rtol=1e-5)


def test_qlora_gradients_and_step_memory_match_lora_on_the_dequantized_weights() -> None:
    """The adapters' gradients are LoRA's on the dequantized base, and the step keeps no full-precision weight for
    the backward (it dequantizes again), so its peak is LoRA's while the base is 4.1 instead of 32 bits/weight."""
    import torch.nn.functional as F

    from trainlab.bench import measure_peak

    def build(method: str):  # type: ignore[no-untyped-def]
        model = tiny_decoder(0, vocab=256, dim=128, n_layers=2)
        apply_peft(model, PeftConfig(method=method, r=4, alpha=8, targets="all-linear", init_seed=0))
        return model

    qlora, lora = build("qlora"), build("lora")
    with torch.no_grad():  # the float model holds exactly the dequantized weights
        for path, m in qlora.named_modules():
            if isinstance(m, NF4Linear):
                lora.get_submodule(path).weight.copy_(m.dequantize())
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))

    def step(model):  # type: ignore[no-untyped-def]
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1)).backward()

    peaks = {}
    for name, model in (("qlora", qlora), ("lora", lora)):
        _, peak = measure_peak(lambda model=model: step(model), inputs=list(model.parameters()))
        peaks[name] = peak.peak_bytes
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    for n, p in qlora.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
    base = {name: sum(p.numel() * p.element_size() for n, p in m.named_parameters()
                      if "lora_" not in n and "embed" not in n and "norm" not in n) for name, m in
            (("qlora", qlora), ("lora", lora))}
    assert base["qlora"] / base["lora"] == pytest.approx((4 + 8 / 64) / 32, rel=0.01)
    # saving the dequantized weights for the backward (F.linear's autograd) would add all of base["lora"] (+76%
    # here); only one layer's dequantization temporaries may add to the peak
    largest = max(m.in_features * m.out_features * 4 for m in qlora.modules() if isinstance(m, NF4Linear))
    assert peaks["qlora"] - peaks["lora"] <= 3 * largest < base["lora"] / 2


@pytest.mark.slow
def test_qlora_adapter_on_a_bitsandbytes_4bit_base_gives_our_logits(tmp_path: Path) -> None:
    """The QLoRA setup of PEFT + bitsandbytes (load_in_4bit, nf4, double quantization, fp32 compute) with our
    adapter computes what our NF4 base + LoRA computes: the same 4-bit weights, the same adapter."""
    pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # 64 wide: bitsandbytes 0.50's CPU dequantization kernel misplaces the absmax of rows shorter than a block
    # (in_features < 64: 3x our error on a 32-wide model); real models' rows are thousands wide
    tok = make_tokenizer("llama")
    folder = tmp_path / "llama"
    make_model("llama", tok, dim=64, positions=64).save_pretrained(folder)
    tok.save_pretrained(folder)
    ours = load_model(folder)  # our decoder
    apply_peft(ours, PeftConfig(method="qlora", r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], init_seed=0))
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    save_adapter(ours, tmp_path / "adapter")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    with torch._dynamo.config.patch(disable=True):  # bitsandbytes would torch.compile its CPU kernels per shape
        base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map="cpu")
        # train mode (no dropout in this model): bitsandbytes 0.50's CPU inference path (eval + no_grad) repacks
        # the 4-bit weights for its gemv kernel and fails on matrices this small
        theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).train()
        ids = _ids(200)
        with torch.no_grad():
            want = theirs(input_ids=ids).logits
            torch.testing.assert_close(ours.eval()(ids), want, atol=1e-4, rtol=1e-4)
