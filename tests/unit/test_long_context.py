"""Long context: YaRN RoPE scaling matches transformers through import, verify and export."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT, hf_model, model_config
from workers.packing_worker import batch, packed_and_alone
from qwenpt.config import ConfigError, ParallelConfig, RopeScalingConfig, register
from qwenpt.validation import validate

# trained at 32 positions, run at 96: YaRN's interpolated frequencies and attention factor both matter
YARN = {
    "qwen2": ("tiny", RopeScalingConfig(type="yarn", factor=4.0, original_max_position_embeddings=32)),
    # Qwen3, with the mscale / mscale_all_dim rule of the attention factor and non-default betas
    "qwen3": ("tiny_qwen3", RopeScalingConfig(type="yarn", factor=8.0, original_max_position_embeddings=32, beta_fast=16.0,
                                              beta_slow=2.0, mscale=0.9, mscale_all_dim=0.5)),
}
SEQ = 96


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(0))


def _logits(m, ckpt) -> torch.Tensor:
    from qwenpt import checkpoint
    from qwenpt.convert.hf import megatron_logits
    from qwenpt.models import build_model

    model = build_model(m, ParallelConfig(), perform_initialization=False)
    checkpoint.load_model(ckpt, model)
    model[0].eval()
    with torch.no_grad():
        return megatron_logits(model, _tokens(m.vocab_size))


@pytest.mark.parametrize("key", list(YARN))
def test_yarn_logits_equal_transformers_through_import_verify_and_export(key, tmp_path, megatron_world):
    import dataclasses

    import transformers

    from qwenpt.convert.hf import export_hf, import_hf, model_config_of_checkpoint, verify
    from qwenpt.models import rope

    name, scaling = YARN[key]
    m = model_config(name, rope_theta=10000.0, rope_scaling=scaling)
    ref = hf_model(m, seed=3)
    expected_factor = rope.attention_factor(scaling)
    assert ref.model.rotary_emb.attention_scaling == pytest.approx(expected_factor, rel=1e-12)
    assert expected_factor == pytest.approx({"qwen2": 0.1 * torch.log(torch.tensor(4.0)).item() + 1,
                                             "qwen3": (0.09 * torch.log(torch.tensor(8.0)).item() + 1)
                                             / (0.05 * torch.log(torch.tensor(8.0)).item() + 1)}[key])
    ref.save_pretrained(tmp_path / "hf")  # transformers 5 writes rope_parameters
    import_hf(tmp_path / "hf", tmp_path / "ckpt")
    imported = model_config_of_checkpoint(tmp_path / "ckpt")
    assert rope.rope_scaling(imported) == scaling

    ours = _logits(imported, tmp_path / "ckpt")
    with torch.no_grad():
        theirs = ref(_tokens(m.vocab_size)).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    # the same weights under plain RoPE, or YaRN without its attention factor, are far off (measured:
    # 0.013 and 0.007 for qwen2, 0.44 and 0.12 for qwen3): the check sees both parts of YaRN
    plain = _logits(dataclasses.replace(imported, rope_scaling=RopeScalingConfig()), tmp_path / "ckpt")
    assert (plain - theirs).abs().max().item() > 1e-3
    unscaled = dataclasses.replace(imported, rope_scaling=dataclasses.replace(scaling, attention_factor=1.0))
    assert (_logits(unscaled, tmp_path / "ckpt") - theirs).abs().max().item() > 1e-3
    report = verify(tmp_path / "hf", tmp_path / "ckpt", ParallelConfig(), seq=SEQ)
    assert report["max_abs_diff"] <= 1e-5

    export_hf(tmp_path / "ckpt", tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())["rope_scaling"]
    assert written == rope.to_hf(m) and written["type"] == "yarn" and written["factor"] == scaling.factor
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(_tokens(m.vocab_size)).logits - theirs).abs().max().item() <= 1e-6
    import_hf(tmp_path / "out", tmp_path / "ckpt2")  # the Hub form ("rope_scaling", "type") reads back the same
    assert rope.rope_scaling(model_config_of_checkpoint(tmp_path / "ckpt2")) == scaling


def test_hf_config_without_factor_takes_the_length_ratio_as_transformers_does():
    from qwenpt.convert.hf_io import model_config_from_hf

    cfg = json.loads(json.dumps({"model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 64,
                                 "num_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 131072,
                                 "rope_scaling": {"type": "yarn", "original_max_position_embeddings": 32768}}))
    m = model_config_from_hf(cfg, "x")
    assert m.rope_scaling.factor == 4.0 and m.rope_scaling.original_max_position_embeddings == 32768
    cfg["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    with pytest.raises(ConfigError, match="config.json: rope scaling type 'dynamic' is not supported"):
        model_config_from_hf(cfg, "x")


def _compose(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_rope_scaling_from_the_command_line_and_its_validation():
    cfg = _compose("model.rope_scaling={type: yarn, factor: 4, original_max_position_embeddings: 512}", "model.rope_theta=500000")
    validate(cfg, check_files=False)
    assert cfg.model.rope_scaling.type == "yarn" and cfg.model.rope_scaling.beta_fast == 32.0
    assert cfg.model.rope_theta == 500000
    for override, message in [
        ("model.rope_scaling={type: yarn, factor: 1, original_max_position_embeddings: 512}", "model.rope_scaling.factor must be above 1"),
        ("model.rope_scaling={type: linear, factor: 2, original_max_position_embeddings: 512}",
         "model.rope_scaling.type 'linear' is not supported"),
        ("model.rope_scaling={type: yarn, factor: 2, original_max_position_embeddings: 512, beta_fast: 1, beta_slow: 1}",
         "need beta_fast > beta_slow > 0"),
        ("model.rope_scaling.factor=4", "model.rope_scaling has a factor or original_max_position_embeddings but no type"),
        ("model.rope_scaling.type=yarn", "YaRN needs factor"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(_compose(override), check_files=False)
    with pytest.raises(ConfigError, match="Qwen \\(v1\\) extends context"):
        validate(_compose("model.family=qwen", "model.rope_scaling={type: yarn, factor: 2, original_max_position_embeddings: 512}"),
                 check_files=False)


# --- document masking --------------------------------------------------------------------------------

S = 64  # sample length


@pytest.fixture(scope="module")
def packed_dataset(tmp_path_factory, megatron_world):
    """A GPTDataset over 40 known documents (each ending in EOD), built the way train.py builds it with
    data.document_mask=true; returns (dataset, documents, eod)."""
    from data_pipeline.indexed import write_indexed_dataset
    from data_pipeline.tokenizer import TextTokenizer
    from qwenpt.config import DataConfig
    from qwenpt.data import BUNDLED_TOKENIZER, Blend, build_datasets, dataset_config

    out = tmp_path_factory.mktemp("packed")
    tok = TextTokenizer(BUNDLED_TOKENIZER)
    g = torch.Generator().manual_seed(7)
    docs = []
    for _ in range(40):
        n = int(torch.randint(3, 40, (1,), generator=g))
        ids = torch.randint(0, tok.vocab_size - 1, (n,), generator=g)
        ids[ids == tok.eod] = 1
        docs.append(ids.tolist() + [tok.eod])
    write_indexed_dataset(out / "docs", docs, tok.vocab_size)
    data = DataConfig(seq_length=S, split="100,0,0", cache_dir=str(out / "cache"), document_mask=True)
    blend = Blend(prefixes=[str(out / "docs")], weights=[1.0], names=["docs"])
    train = build_datasets(dataset_config(data, tok, blend, seed=3), [8, 0, 0])[0]
    return train, docs, tok.eod


def _micro_batch(ds, indices):
    samples = [ds[i] for i in indices]
    return {k: torch.stack([s[k] for s in samples]) for k in ("tokens", "labels", "loss_mask", "position_ids")}


def test_document_boundaries_come_from_the_documents_eods(packed_dataset):
    from qwenpt.packing import pack

    ds, docs, eod = packed_dataset
    whole = [tuple(d) for d in docs]
    batch = _micro_batch(ds, range(4))
    flat, params = pack(batch)
    assert flat["tokens"].shape == (1, 4 * S)
    bounds = params.cu_seqlens_q.tolist()
    tokens = batch["tokens"]
    expected = []
    for row in range(4):  # a document starts each sample and after each EOD inside it
        ends = [i + 1 for i in (tokens[row] == eod).nonzero().squeeze(1).tolist() if i + 1 < S]
        expected += [row * S + i for i in [0, *ends]]
    assert bounds == expected + [4 * S]
    assert params.max_seqlen_q == max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    # every segment that is neither a sample's first nor its last is one whole document of the dataset
    stream = flat["tokens"][0].tolist()
    inner = [tuple(stream[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if a % S and b % S]
    assert len(inner) >= 4 and all(seg in whole for seg in inner)
    # the loss is masked exactly at the EODs (their labels open the next document)
    assert torch.equal(batch["loss_mask"] == 0, tokens == eod)


@pytest.mark.parametrize("scaling", [None, RopeScalingConfig(type="yarn", factor=4.0, original_max_position_embeddings=16)])
def test_packed_documents_give_the_losses_and_gradients_of_each_document_alone(packed_dataset, scaling, megatron_world):
    from qwenpt.models import build_model
    from qwenpt.packing import pack

    ds, _, _ = packed_dataset
    m = model_config("tiny", rope_scaling=scaling or RopeScalingConfig())
    torch.manual_seed(0)
    model = build_model(m, ParallelConfig())[0]
    batch = _micro_batch(ds, range(2, 4))
    flat, params = pack(batch)

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        return out

    packed, alone, packed_grads, alone_grads, documents = packed_and_alone(model, flat, params, grads)
    assert documents >= 5  # several documents per sample
    assert (packed - alone).abs().max().item() <= 1e-5
    for name, g in packed_grads.items():
        assert (g - alone_grads[name]).abs().max().item() <= 1e-5, name
    # without document masking the same samples give other losses: the test sees the masking
    with torch.no_grad():
        crossing = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).reshape(-1)
    assert (crossing - alone).abs().max().item() > 1e-3


class _Group:
    """A context-parallel group as pack() sees it (its size and this rank)."""

    def __init__(self, size: int, rank: int) -> None:
        self.size, self.rank = (lambda: size), (lambda: rank)


def test_context_parallel_split_is_per_document_and_load_balanced():
    """Under CP each document is padded to a multiple of 2 x CP and cut into 2 x CP chunks, rank r keeping
    chunks r and 2 x CP - 1 - r (Transformer Engine's THD partitioning): together the ranks hold every token
    once, padding carries no loss, and positions restart per document."""
    from qwenpt.packing import pack

    whole = batch()  # documents of 10, 24, 30 | 40, 24 tokens
    whole["index"] = torch.arange(128).view(2, 64)
    parts = [pack(dict(whole), _Group(2, r)) for r in range(2)]
    params = parts[0][1]
    assert params.cu_seqlens_q.tolist() == [0, 10, 34, 64, 104, 128]
    assert params.cu_seqlens_q_padded.tolist() == [0, 12, 36, 68, 108, 132] and params.max_seqlen_q == 40
    (r0, _), (r1, _) = parts
    assert r0["tokens"].shape == r1["tokens"].shape == (1, 66)
    # the first document (10 tokens + 2 padding, chunks of 3): rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2
    assert r0["index"][0, :6].tolist() == [0, 1, 2, 9, 0, 0] and r1["index"][0, :6].tolist() == [3, 4, 5, 6, 7, 8]
    assert r0["position_ids"][0, :6].tolist() == [0, 1, 2, 9, 10, 11]
    real = torch.cat([(p["loss_mask"][0] > 0) | (p["tokens"][0] == 0) for p, _ in parts])  # EODs are token 0
    index = torch.cat([p["index"][0] for p, _ in parts])
    assert sorted(index[real].tolist()) == list(range(128))  # every token exactly once
    mask = torch.cat([p["loss_mask"][0] for p, _ in parts])
    assert mask.sum() == whole["loss_mask"].sum() and mask[~real].sum() == 0
    # sequence parallelism over 3 ranks: the last document takes the padding to a multiple of 2 x 2 x 3
    assert pack(dict(whole), _Group(2, 0), 3)[1].cu_seqlens_q_padded.tolist() == [0, 12, 36, 68, 108, 132]
    assert pack(dict(whole), _Group(4, 1), 3)[1].cu_seqlens_q_padded.tolist() == [0, 16, 40, 72, 112, 144]
    assert pack(dict(whole), _Group(4, 1), 5)[1].cu_seqlens_q_padded.tolist()[-1] == 160


def test_the_loaders_host_plan_gives_the_same_pack_and_rope_positions():
    """The boundaries, padding and CP indices the loader computes on the host (qwenpt.packing.Collate, in its
    workers) give exactly the pack made from the position ids, with this rank's boundaries as host ints and
    each token's position attached for RoPE."""
    from qwenpt.packing import Collate, pack, positions_of

    whole = batch()
    samples = [{k: v[i] for k, v in whole.items()} for i in range(2)]
    for cp, rank, sp in [(1, 0, 1), (2, 0, 1), (2, 1, 1), (4, 1, 3)]:
        group = _Group(cp, rank) if cp > 1 else None
        loaded = Collate(cp, rank, sp)(samples)
        flat, params = pack({k: loaded[k] for k in whole}, group, micro_plan=loaded["pack"])
        ref_flat, ref = pack(dict(whole), group, sp)
        for key in whole:
            assert torch.equal(flat[key], ref_flat[key]), (cp, key)
        for name in ("cu_seqlens_q", "cu_seqlens_q_padded"):
            a, b = getattr(params, name), getattr(ref, name)
            assert (a is None and b is None) or torch.equal(a, b)
        cu = params.cu_seqlens_q if cp == 1 else params.cu_seqlens_q_padded
        assert params.local_bounds == tuple((cu // cp).tolist()) and params.max_seqlen_q == ref.max_seqlen_q
        assert torch.equal(positions_of(cu), flat["position_ids"][0])  # within each document, CP chunks too
    assert params.local_bounds[:3] == (0, 4, 10)  # CP 4: documents of 10 and 24 tokens padded to 16 and 24


def _varlen_stand_in(calls: list):
    """torch's varlen_attn semantics on the CPU (each document of cu_seq_q causal, alone), recording its calls."""
    import torch.nn.functional as F

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False,
               is_causal=False):
        calls.append({"heads": (q.shape[1], k.shape[1]), "max": (max_q, max_k), "cu": cu_q.tolist(),
                      "same_cu": cu_q is cu_k, "causal": window_size == (-1, 0) or is_causal, "gqa": enable_gqa})
        bounds = cu_q.tolist()
        outs = [F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v)), is_causal=True,
                                               scale=scale, enable_gqa=enable_gqa).transpose(0, 1)
                for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(outs)
    return varlen


@pytest.mark.parametrize("torch_api", ["2.12+ (enable_gqa)", "2.11 (no GQA argument)"])
def test_one_varlen_attention_call_per_layer_equals_each_document_alone(torch_api, packed_dataset, megatron_world,
                                                                        monkeypatch):
    """On a GPU the packed documents of a micro-batch go through one variable-length flash-attention call
    per layer (no per-document slicing, no read-back). Here that call is a CPU stand-in with the same
    contract: the model's losses and gradients equal the per-document path's, with one call per layer,
    causal, on the device cu_seqlens with the longest document, GQA through the argument (torch >= 2.12)
    or with K/V heads repeated (2.11, whose varlen_attn has no GQA argument)."""
    from qwenpt.models import attention, build_model
    from qwenpt.packing import pack

    ds, _, _ = packed_dataset
    m = model_config("tiny")
    torch.manual_seed(0)
    model = build_model(m, ParallelConfig())[0]
    flat, params = pack(_micro_batch(ds, range(2, 4)))

    def run(kernel):
        monkeypatch.setattr(attention.SDPAttention, "packed_kernel", kernel)
        losses = model(flat["tokens"], flat["position_ids"], None, labels=flat["labels"], packed_seq_params=params)
        (losses * flat["loss_mask"]).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        return losses.detach(), grads

    calls: list = []
    gqa = torch_api.startswith("2.12")
    monkeypatch.setattr(attention, "varlen_attn", _varlen_stand_in(calls))
    monkeypatch.setattr(attention, "_VARLEN_ARGS", {"scale", "window_size"} | ({"enable_gqa"} if gqa else set()))
    one_call, one_call_grads = run("varlen")
    per_document, per_document_grads = run("per_document")
    assert len(calls) == m.num_layers  # one call per layer for the whole micro-batch
    bounds = params.cu_seqlens_q.tolist()
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    heads = (m.num_attention_heads, m.num_query_groups if gqa else m.num_attention_heads)
    assert all(c == {"heads": heads, "max": (longest, longest), "cu": bounds, "same_cu": True, "causal": True,
                     "gqa": gqa} for c in calls)
    assert len(bounds) - 1 >= 5
    assert (one_call - per_document).abs().max().item() <= 1e-5
    for name, g in one_call_grads.items():
        assert (g - per_document_grads[name]).abs().max().item() <= 1e-5, name
    # the kernel choice: varlen on a CUDA device in bf16/fp16 only
    assert attention.varlen_available(torch.device("cuda", 0), torch.bfloat16) == (attention.varlen_attn is not None)
    assert not attention.varlen_available(torch.device("cuda", 0), torch.float32)
    assert not attention.varlen_available(torch.device("cpu"), torch.bfloat16)


def test_document_mask_validation():
    for overrides, message in [
        (["model=tiny_moe", "parallel.context_parallel_size=2", "parallel.expert_model_parallel_size=2"],
         "data.document_mask with parallel.context_parallel_size 2 and expert_model_parallel_size 2 needs "
         "parallel.moe_token_dispatcher_type=alltoall"),
        (["data.document_mask=false", "data.reset_position_ids=true"],
         "data.reset_position_ids=True with data.document_mask=False is not supported"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(_compose(*overrides), world_size=4 if "model=tiny_moe" in overrides else 1, check_files=False)
    cfg = _compose()
    assert cfg.data.document_mask is True  # on by default for new runs
    for layout in ("parallel.context_parallel_size=2", "parallel.pipeline_model_parallel_size=2"):
        validate(_compose(layout), world_size=2, check_files=False)
    validate(_compose("model=tiny_moe", "parallel.context_parallel_size=2", "parallel.expert_model_parallel_size=2",
                      "parallel.moe_token_dispatcher_type=alltoall"), world_size=4, check_files=False)
    validate(_compose("data.reset_position_ids=true"), check_files=False)


def test_a_resumed_run_keeps_its_checkpoints_document_masking():
    """New runs mask documents; a run resumed from a checkpoint saved before the option existed (or with it
    off) keeps training without, and says so."""
    from qwenpt.training.resume import _kept

    now = OmegaConf.to_container(_compose(), resolve=True)
    old = OmegaConf.to_container(_compose(), resolve=True)
    del old["data"]["document_mask"]
    kept, notes = _kept(old, now, "step_00000010")
    assert kept == {"data.document_mask": False}
    assert notes == ["data.document_mask: step_00000010 was trained with False, and the resumed run keeps it (the "
                     "config says True; start a new run with checkpoint.init_from to change it)"]
    assert _kept(now, now, "step_00000010") == ({"data.document_mask": True}, [])
