"""HF interop: export matches transformers' Llama, round trips, HFCausalLM, load_model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model import CausalLM, Decoder, HFCausalLM, load_model, load_pretrained, save_pretrained
from trainlab.model.hf_export import model_config_from_hf

V = 61


def tiny_decoder(n_kv_heads: int | None, tie: bool, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=V,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        ffn_dim=48,
        max_seq_len=64,
        rope_theta=1234.0,
        norm_eps=1e-6,
        tie_embeddings=tie,
        attention="naive",
    )
    m = Decoder(cfg)
    with torch.no_grad():  # non-trivial norm weights, so a mixed-up norm cannot go unnoticed
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i + 4 for i in range(V - 4)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("n_kv", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_export_matches_transformers_llama(tmp_path, n_kv, tie):
    ours = tiny_decoder(n_kv, tie)
    out = save_pretrained(ours, tmp_path / "ckpt")
    hf = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert hf.config.num_key_value_heads == (n_kv or 4)
    assert hf.config.tie_word_embeddings is tie
    assert hf.num_parameters() == ours.num_parameters()
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)
        # hidden states through the protocol of both implementations agree too
        wrapped = HFCausalLM(hf)
        torch.testing.assert_close(ours.hidden_states(ids), wrapped.hidden_states(ids), atol=1e-5, rtol=1e-5)

    # save -> load: bit-identical weights and logits
    back = load_pretrained(out)
    assert back.config == ours.config
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), back.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    with torch.no_grad():
        assert torch.equal(back.eval()(ids), ours(ids))


def test_export_folder_contents_and_tokenizer(tmp_path):
    ours = tiny_decoder(2, tie=False)
    tok = tiny_tokenizer()
    out = save_pretrained(ours, tmp_path / "ckpt", tokenizer=tok)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "trainlab.json", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == (2, 48, V)
    assert config["rope_theta"] == 1234.0 and config["rms_norm_eps"] == 1e-6
    assert config["max_position_embeddings"] == 64 and config["tie_word_embeddings"] is False
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    weights = load_file(out / "model.safetensors")
    assert "lm_head.weight" in weights and "model.layers.1.self_attn.k_proj.weight" in weights
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)
    assert ModelConfig.model_validate_json((out / "trainlab.json").read_text()) == ours.config

    # overwriting an existing folder replaces it and leaves no temporary siblings behind
    other = tiny_decoder(2, tie=False, seed=1)
    save_pretrained(other, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(load_pretrained(out).embed.weight, other.embed.weight)
    assert "tokenizer.json" not in {p.name for p in out.iterdir()}


def test_load_a_transformers_saved_llama(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=300.0,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert isinstance(model, Decoder)
    assert model.config.rope_theta == 300.0 and model.config.hidden_dim == 40
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_unrepresentable_llama_is_refused_and_falls_back_to_hf(tmp_path):
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=4,
        attention_bias=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "biased")
    raw = json.loads((tmp_path / "biased" / "config.json").read_text())
    with pytest.raises(UserError, match="biases"):
        model_config_from_hf(raw)
    with pytest.raises(UserError, match="rope type 'linear'"):
        model_config_from_hf(raw | {"attention_bias": False, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert isinstance(load_model(tmp_path / "biased"), HFCausalLM)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=V,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("gpt2") / "model"
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_hf_causal_lm_protocol_with_gpt2(gpt2_dir):
    model = load_model(gpt2_dir)
    assert isinstance(model, HFCausalLM) and isinstance(model, CausalLM)
    assert model.tokenizer is not None and model.config.model_type == "gpt2"
    assert not model.model.training  # from_pretrained returns eval mode (no dropout)
    ids = torch.randint(3, V, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        logits = model(ids, mask)
        hidden = model.hidden_states(ids, mask)
        torch.testing.assert_close(hidden @ model.output_embedding().T, logits, atol=1e-5, rtol=1e-5)
        # positions come from the mask: the left-padded row equals its prompt alone
        alone = model(ids[:1, 3:])
    torch.testing.assert_close(logits[0, 3:], alone[0], atol=1e-5, rtol=1e-5)
    assert model.num_parameters() == model.model.num_parameters()


def test_hf_generate_matches_cache_free_and_transformers(gpt2_dir):
    model = load_model(gpt2_dir)
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
    mask = (ids != 0).long()
    cached = model.generate(ids, mask, max_new_tokens=6)
    assert torch.equal(cached, model.generate(ids, mask, max_new_tokens=6, use_cache=False))
    theirs = model.model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    assert torch.equal(cached, theirs)


def test_output_embedding_refused_when_head_is_not_linear(gpt2_dir):
    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir)
    hf.lm_head.bias = torch.nn.Parameter(torch.zeros(V))
    wrapped = HFCausalLM(hf)
    with pytest.raises(UserError, match="bias"):
        wrapped.output_embedding()


def test_load_model_errors(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "missing")):
        load_model(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="got a file"):
        load_model(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no config\.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(UserError, match=r"config\.json or trainlab\.json"):
        load_pretrained(tmp_path / "empty")


def test_load_pretrained_rejects_mismatched_weights(tmp_path):
    out = save_pretrained(tiny_decoder(2, tie=True), tmp_path / "ckpt")
    config = json.loads((out / "trainlab.json").read_text())
    (out / "trainlab.json").write_text(json.dumps(config | {"n_layers": 3}))
    with pytest.raises(UserError, match="missing"):
        load_pretrained(out)
    (out / "trainlab.json").write_text(json.dumps(config | {"ffn_dim": 64}))
    with pytest.raises(UserError, match="shape"):
        load_pretrained(out)


def test_load_model_picks_our_decoder_for_our_folders(tmp_path):
    out = save_pretrained(tiny_decoder(1, tie=True), tmp_path / "ckpt")
    model = load_model(out)
    assert isinstance(model, Decoder) and isinstance(model, CausalLM)
    assert model.config.attention == "naive"  # from trainlab.json, which HF's config cannot carry
    assert isinstance(load_model(out, kind="hf"), HFCausalLM)


def _loss_grads(model, ids):
    model.train()
    torch.manual_seed(0)  # the same dropout masks in both runs (checkpointing replays the RNG state)
    model.zero_grad(set_to_none=True)
    model(ids).float().logsumexp(-1).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_apply_checkpointing_to_loaded_models(gpt2_dir, tmp_path):
    from trainlab.memory.measure import SavedTensorBytes
    from trainlab.model.protocol import apply_checkpointing, hf_checkpointing

    ids = torch.randint(3, V, (2, 9))
    # a transformers model: its own per-layer checkpointing, same gradients, less saved for backward
    hf = load_model(gpt2_dir)
    plain = _loss_grads(hf, ids)
    with SavedTensorBytes(exclude=hf.parameters()) as without:
        hf(ids).sum()
    apply_checkpointing(hf, "full")
    assert hf_checkpointing(hf.model)
    ckpt = _loss_grads(hf, ids)
    with SavedTensorBytes(exclude=hf.parameters()) as with_ckpt:
        hf(ids).sum()
    assert with_ckpt.bytes < without.bytes
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, atol=1e-6, rtol=1e-5)
    apply_checkpointing(hf, "none")
    assert not hf_checkpointing(hf.model)
    with pytest.raises(UserError, match="needs trainlab's decoder"):
        apply_checkpointing(hf, "selective")
    # our decoder: the policy lands in its config, every policy allowed
    dec = Decoder(ModelConfig(vocab_size=V, dim=32, n_layers=2, n_heads=2, max_seq_len=32))
    plain = _loss_grads(dec, ids)
    apply_checkpointing(dec, "every_n", 1)
    assert (dec.config.checkpointing, dec.config.checkpoint_every) == ("every_n", 1)
    ckpt = _loss_grads(dec, ids)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, atol=1e-6, rtol=1e-5)
