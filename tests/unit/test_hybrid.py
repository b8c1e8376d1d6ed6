"""The hybrid generation (Qwen3-Next, Qwen3.5, Qwen3.6): the CPU Gated DeltaNet equals transformers' torch
path, packed documents through GDN equal each document alone, Hugging Face checkpoints import with
transformers' logits at TP1/TP2/PP2/EP2 and export back bit for bit (MTP tensors included, which transformers
drops), and the tiny hybrids train with MTP on."""

from __future__ import annotations

import dataclasses
import json
import sys

import megatron.core
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import logits_error, model_config
from qwenpt.config import ConfigError, ParallelConfig
from qwenpt.models import hybrid
from helpers.hybrid import MODELS, PACKS_GDN


def _fla_inputs(seed: int, seq: int = 150, batch: int = 2, k_heads: int = 2, v_heads: int = 4, dk: int = 16, dv: int = 24):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, k_heads, dk, generator=g)
    k = torch.randn(batch, seq, k_heads, dk, generator=g)
    v = torch.randn(batch, seq, v_heads, dv, generator=g)
    decay = -torch.rand(batch, seq, v_heads, generator=g) * 2  # log decays <= 0
    beta = torch.rand(batch, seq, v_heads, generator=g)
    return [t.requires_grad_() for t in (q, k, v, decay, beta)]


def _ours(q, k, v, decay, beta, cu_seqlens=None):
    r = v.shape[2] // q.shape[2]  # megatron-core repeats q and k over the value heads before the kernel
    out, _ = hybrid.chunk_gated_delta_rule(q.repeat_interleave(r, 2), k.repeat_interleave(r, 2), v, decay, beta,
                                           use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens)
    return out


def _theirs(q, k, v, decay, beta):
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    return torch_chunk_gated_delta_rule(q, k, v, decay, beta, use_qk_l2norm_in_kernel=True)[0]


def test_cpu_gated_delta_rule_equals_transformers_forward_and_gradients():
    """150 tokens: two full chunks of 64 and a padded one; 2 key heads serving 4 value heads."""
    ours_in, theirs_in = _fla_inputs(0), _fla_inputs(0)
    ours, theirs = _ours(*ours_in), _theirs(*theirs_in)
    assert ours.shape == (2, 150, 4, 24)
    assert (ours - theirs).abs().max().item() <= 1e-5
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    for a, b, name in zip(ours_in, theirs_in, ("q", "k", "v", "g", "beta")):
        scale = b.grad.abs().max().item()
        assert (a.grad - b.grad).abs().max().item() <= 1e-5 * max(1.0, scale), name


def test_cpu_causal_conv1d_equals_transformers():
    from transformers.models.qwen3_next.modeling_qwen3_next import causal_conv1d_fn

    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(2, 70, 12, generator=g), torch.randn(12, 4, generator=g)
    ours, _ = hybrid.causal_conv1d(x, weight, activation="silu")
    theirs = causal_conv1d_fn(x.transpose(1, 2), weight, None, activation="silu").transpose(1, 2)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_packed_documents_through_the_cpu_kernels_equal_each_document_alone():
    """cu_seqlens restarts the recurrent state and the convolution at every document (lengths 50, 1, 99:
    a document inside a chunk, a one-token one, one across chunk boundaries)."""
    from transformers.models.qwen3_next.modeling_qwen3_next import causal_conv1d_fn

    q, k, v, decay, beta = (t.detach()[:1] for t in _fla_inputs(3))
    cu = torch.tensor([0, 50, 51, 150], dtype=torch.int32)
    packed = _ours(q, k, v, decay, beta, cu_seqlens=cu)
    alone = torch.cat([_theirs(*(t[:, a:b] for t in (q, k, v, decay, beta))) for a, b in zip(cu[:-1], cu[1:])], dim=1)
    assert (packed - alone).abs().max().item() <= 1e-5
    x, weight = torch.randn(1, 150, 8), torch.randn(8, 4)
    conv, _ = hybrid.causal_conv1d(x, weight, activation="silu", cu_seqlens=cu)
    conv_alone = torch.cat([causal_conv1d_fn(x[:, a:b].transpose(1, 2), weight, None, activation="silu").transpose(1, 2)
                            for a, b in zip(cu[:-1], cu[1:])], dim=1)
    assert (conv - conv_alone).abs().max().item() <= 1e-5


def _megatron_logits(model, tokens, positions, packed=None):
    with torch.no_grad():
        logits = model(tokens, positions, None, packed_seq_params=packed)
    return logits.float()


@pytest.mark.skipif(not PACKS_GDN, reason=f"megatron-core {megatron.core.__version__}'s GDN refuses packed sequences "
                                           f"(refusal tested below); needs >= {hybrid.PACKED_GDN_VERSION}")


def test_packed_documents_through_the_model_equal_each_document_alone(megatron_world):
    """megatron-core's GatedDeltaNet (0.18+) with the CPU kernels, and gated attention, on three documents
    packed into one sequence (THD): each document's logits equal those of the document alone."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from qwenpt.models import build_model

    m = dataclasses.replace(model_config("tiny_qwen3_5"), mtp_num_layers=0)
    model = build_model(m, ParallelConfig())[0].eval()
    lengths = [70, 1, 57]
    tokens = torch.randint(0, m.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(4))
    cu = torch.tensor([0, 70, 71, 128], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=70, max_seqlen_kv=70)
    together = _megatron_logits(model, tokens, positions, packed)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = _megatron_logits(model, tokens[:, a:b], torch.arange(b - a).unsqueeze(0))
        assert (together[:, a:b] - alone).abs().max().item() <= 1e-5, (a, b)


def test_refusals_name_the_field_and_the_fix(monkeypatch):
    from qwenpt.models.checks import validate_model

    m = model_config("tiny_qwen3_5")
    with pytest.raises(ConfigError, match="linear_num_value_heads 5 must be a multiple of model.linear_num_key_heads 2"):
        validate_model(dataclasses.replace(m, linear_num_value_heads=5))
    with pytest.raises(ConfigError, match="linear_num_key_heads 2 is not divisible by parallel.tensor_model_parallel_size 4"):
        validate_model(dataclasses.replace(m, num_attention_heads=8, num_query_groups=4),
                       ParallelConfig(tensor_model_parallel_size=4))
    if not PACKS_GDN:
        with pytest.raises(ConfigError, match=r"needs megatron-core >= 0.18 .* or set data.document_mask=false"):
            hybrid.validate_document_mask(m, True)
        with pytest.raises(ConfigError, match="context parallelism with Gated DeltaNet layers needs megatron-core >= 0.18"):
            validate_model(m, ParallelConfig(context_parallel_size=2))
    hybrid.validate_document_mask(m, False)
    with pytest.raises(ConfigError, match="tie_embeddings and parallel.pipeline_model_parallel_size 2"):
        validate_model(m, ParallelConfig(pipeline_model_parallel_size=2))
    # MTP on packed documents under CP: refused for any family (a dense Qwen3 with MTP here)
    with pytest.raises(ConfigError, match="measured: MTP loss 2e-5 off one process"):
        hybrid.validate_document_mask(dataclasses.replace(model_config("tiny"), mtp_num_layers=1), True,
                                      ParallelConfig(context_parallel_size=2))
    # a GPU without flash-linear-attention: refused before anything is built, naming the extra
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "fla.ops.gated_delta_rule", None)
    with pytest.raises(ConfigError, match=r"pip install 'qwenpt\[gpu\]'"):
        validate_model(m)


# ---------------------------------------------------------------- Hugging Face interop

ARCHITECTURES = {"qwen3_5": "Qwen3_5ForCausalLM", "qwen3_5_moe": "Qwen3_5MoeForCausalLM", "qwen3_next": "Qwen3NextForCausalLM"}


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 80), generator=torch.Generator().manual_seed(0))  # 80: two GDN chunks


@pytest.mark.parametrize("key", list(MODELS))
def test_import_gives_transformers_logits(converted_hybrids, key, megatron_world):
    from qwenpt.convert.hf import model_config_of_checkpoint

    ref, _, ckpt, summary, mtp = converted_hybrids[key]
    m = model_config_of_checkpoint(ckpt)
    assert (m.family, m.full_attention_interval, m.mtp_num_layers) == (MODELS[key][1].get("family", "qwen3.5"), 4, 1)
    # every parameter: transformers' model plus the MTP layer it drops
    assert summary["parameters"] == sum(p.numel() for p in ref.parameters()) + sum(t.numel() for t in mtp.values())
    # the decoder's logits (transformers has no MTP layer): the checkpoint loaded without its MTP tensors
    assert logits_error(ref, dataclasses.replace(m, mtp_num_layers=0), ckpt, _tokens(m.vocab_size)) <= 1e-5


@pytest.mark.parametrize("key", list(MODELS))
def test_export_returns_every_tensor_bit_for_bit_mtp_included(converted_hybrids, key, tmp_path):
    import transformers

    from qwenpt.convert.hf import export_hf

    ref, hf_dir, ckpt, _, mtp = converted_hybrids[key]
    summary = export_hf(ckpt, tmp_path / "out", max_shard_gib=2 / 1024)
    exported = {}
    for f in summary["files"]:
        exported.update(load_file(str(tmp_path / "out" / f)))
    original = load_file(str(hf_dir / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)
    assert set(mtp) <= set(exported) and len(mtp) > 10
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[key]] and config["mtp_num_hidden_layers"] == 1
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    tokens = _tokens(config["vocab_size"])
    with torch.no_grad():
        assert torch.equal(back(tokens).logits, ref(tokens).logits)


def test_released_multimodal_checkpoint_imports_its_language_model(converted_hybrids, tmp_path, megatron_world):
    """Qwen3_5ForConditionalGeneration's layout: the language model under model.language_model., a vision
    tower under model.visual. (left alone), config.json with text_config."""
    from qwenpt.convert.hf import import_hf

    _, hf_dir, ckpt, summary, _ = converted_hybrids["qwen3_5"]
    tensors = load_file(str(hf_dir / "model.safetensors"))
    renamed = {(k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k): v for k, v in tensors.items()}
    renamed["model.visual.patch_embed.proj.weight"] = torch.zeros(8, 3, 2, 2)
    (tmp_path / "mm").mkdir()
    save_file(renamed, str(tmp_path / "mm" / "model.safetensors"))
    text = json.loads((hf_dir / "config.json").read_text())
    config = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
              "tie_word_embeddings": text.pop("tie_word_embeddings"), "text_config": text, "vision_config": {}}
    (tmp_path / "mm" / "config.json").write_text(json.dumps(config))
    got = import_hf(tmp_path / "mm", tmp_path / "mm_ckpt")
    assert got["parameters"] == summary["parameters"] and got["tensors_read"] == summary["tensors_read"]
    from megatron.core import dist_checkpointing

    a, b = (dist_checkpointing.load_tensors_metadata(str(p)) for p in (ckpt, tmp_path / "mm_ckpt"))
    assert sorted(a) == sorted(b)


# ---------------------------------------------------------------- training
