"""Hugging Face interop: import at any layout gives transformers' logits, export reproduces every tensor,
resharding keeps logits, and bad checkpoints are refused with the tensor named."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, logits_error
from qwenpt.config import ConfigError
from helpers.convert import MODELS

TOKENIZER_DIR = ROOT / "qwenpt" / "assets" / "tokenizer"
ARCHITECTURES = {"dense_gqa": "Qwen2ForCausalLM", "tied": "Qwen2ForCausalLM", "moe": "Qwen2MoeForCausalLM",
                 "qwen_v1": "QWenLMHeadModel", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


def _tokens(m_vocab: int) -> torch.Tensor:
    return torch.randint(0, m_vocab, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("key", list(MODELS))
def test_import_gives_transformers_logits(converted, key, megatron_world):
    from qwenpt.convert.hf import model_config_of_checkpoint

    ref, _, ckpt, summary = converted[key]
    m = model_config_of_checkpoint(ckpt)
    assert m.family == {"qwen_v1": "qwen", "qwen3": "qwen3", "qwen3_moe": "qwen3"}.get(key, "qwen2")
    assert summary["parameters"] == sum(p.numel() for p in ref.parameters())
    assert logits_error(ref, m, ckpt, _tokens(m.vocab_size)) <= 1e-5


@pytest.mark.parametrize("key", list(MODELS))
def test_export_reproduces_every_tensor(converted, key, tmp_path):
    import transformers

    from qwenpt.convert.hf import export_hf

    ref, hf_dir, ckpt, _ = converted[key]
    # shards of at most 2 MB: several files and an index, as save_pretrained writes large models
    summary = export_hf(ckpt, tmp_path / "out", max_shard_gib=2 / 1024, tokenizer=TOKENIZER_DIR)
    assert len(summary["files"]) > 1 and "tokenizer.json" in summary["tokenizer_files"]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == summary["files"]
    exported = {}
    for f in summary["files"]:
        exported.update(load_file(str(tmp_path / "out" / f)))
    original = load_file(str(hf_dir / "model.safetensors"))
    original = {k: v for k, v in original.items() if not k.endswith("inv_freq")}
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if key == "qwen_v1":
        assert config["architectures"] == ["QWenLMHeadModel"] and config["intermediate_size"] == 704
        return
    assert config["architectures"] == [ARCHITECTURES[key]]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    tokens = _tokens(config["vocab_size"])
    with torch.no_grad():
        assert torch.equal(back(tokens).logits, ref(tokens).logits)


def test_bad_checkpoints_are_refused_naming_the_tensor(converted, tmp_path, megatron_world):
    from qwenpt.convert.hf import import_hf
    from qwenpt.convert.hf_io import model_config_from_hf, read_hf_config

    _, hf_dir, _, _ = converted["dense_gqa"]
    tensors = load_file(str(hf_dir / "model.safetensors"))
    for name, change, message in [
        ("shape", {"model.layers.1.self_attn.k_proj.weight": torch.zeros(32, 128)},
         "tensor model.layers.1.self_attn.k_proj.weight has shape [32, 128], but config.json's architecture needs [64, 128]"),
        ("unknown", {"model.layers.0.mlp.extra.weight": torch.zeros(2)},
         "1 tensors this model has no place for (nothing was written): model.layers.0.mlp.extra.weight"),
    ]:
        bad = tmp_path / name
        bad.mkdir()
        shutil.copy(hf_dir / "config.json", bad / "config.json")
        save_file({**tensors, **change}, str(bad / "model.safetensors"))
        with pytest.raises(ConfigError) as err:
            import_hf(bad, tmp_path / f"{name}_ckpt")
        assert message in str(err.value)
        assert not (tmp_path / f"{name}_ckpt").exists()
    # the Hub's config.json form (rope_theta at the top) and transformers 5's (rope_parameters) agree
    cfg = read_hf_config(hf_dir)
    hub = {k: v for k, v in cfg.items() if k != "rope_parameters"} | {"rope_theta": cfg["rope_parameters"]["rope_theta"]}
    assert model_config_from_hf(hub, "x") == model_config_from_hf(cfg, "x")
    assert model_config_from_hf(cfg, "x").rope_theta == 1e6


def test_init_from_hf_refuses_weights_of_another_architecture(converted):
    from hydra import compose, initialize_config_dir

    from qwenpt.config import register
    from qwenpt.validation import validate

    _, hf_dir, _, _ = converted["dense_gqa"]
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["model=tiny_moe", f"checkpoint.init_from_hf={hf_dir}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert f"checkpoint.init_from_hf: {hf_dir} is not model=tiny_moe" in str(err.value)
    assert "tie_embeddings False vs False" not in str(err.value) and "num_experts 8 vs None" in str(err.value)


def test_import_cli_names_the_file_for_a_missing_key_and_a_truncated_safetensors(converted, tmp_path, capsys):
    """Damaged inputs end in one clear line naming the file (and the key), exit status 2, nothing written."""
    from qwenpt.convert.__main__ import main

    _, hf_dir, _, _ = converted["qwen3_moe"]
    no_key = tmp_path / "no_key"
    shutil.copytree(hf_dir, no_key)
    config = json.loads((hf_dir / "config.json").read_text())
    del config["moe_intermediate_size"]
    (no_key / "config.json").write_text(json.dumps(config))
    truncated = tmp_path / "truncated"
    shutil.copytree(hf_dir, truncated)
    data = (hf_dir / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted download
    for src, message in [
        (no_key, f"error: {no_key / 'config.json'}: no 'moe_intermediate_size', which a qwen3_moe config needs"),
        (truncated, f"error: {truncated / 'model.safetensors'}: not a readable safetensors file "
                    "(Error while deserializing header: incomplete metadata, file not fully covered); "
                    "it is truncated or corrupt"),
    ]:
        assert main(["import", "--hf", str(src), "--out", str(tmp_path / f"{src.name}_ckpt")]) == 2
        out = capsys.readouterr().out
        assert message in out, out
        assert "Traceback" not in out and not (tmp_path / f"{src.name}_ckpt").exists()


def test_export_tokenizer_by_qwen_name_loads_in_transformers(tmp_path):
    """`export --tokenizer qwen3` puts the real Qwen3 tokenizer (rebuilt offline) beside the weights."""
    import transformers

    from qwenpt.convert.hf_io import copy_tokenizer

    copied = copy_tokenizer("qwen3", tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= set(copied)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__.startswith("Qwen2Tokenizer") and len(tok) == 151669
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<think>", "</think>"]) == [151643, 151644, 151667, 151668]
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    with pytest.raises(ConfigError, match="no tokenizer files found"):
        copy_tokenizer(tmp_path / "empty", tmp_path / "out")


def _tree(root) -> dict:
    """Every file under ``root`` (relative path -> SHA-256) and every folder (-> None): equal trees are
    byte-identical, with nothing added or removed."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root) -> set:
    return {(p.is_dir(), p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def _refused(main, capsys, args: list, message: str, root) -> None:
    """The command exits 2 with ``message`` as its one error line (no traceback) and ``root`` stays byte-identical."""
    before = _tree(root)
    assert main(args) == 2
    out = capsys.readouterr().out
    assert f"error: {message}\n" in out and out.count("error: ") == 1 and "Traceback" not in out, out
    assert _tree(root) == before


def test_import_refuses_an_out_that_is_the_input_or_not_an_earlier_import(converted, tmp_path, capsys):
    """`import` never deletes its --hf, a folder qwenpt did not write, or an export, even with
    --overwrite, and replaces an earlier import only with --overwrite."""
    from qwenpt.convert.__main__ import main
    from qwenpt.convert.hf import export_hf, import_hf

    _, src, ckpt, _ = converted["dense_gqa"]
    hf = shutil.copytree(src, tmp_path / "hf")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.txt").write_text("mine")
    export_hf(ckpt, tmp_path / "export")
    import_hf(hf, tmp_path / "earlier")
    (tmp_path / "file").write_text("x")
    for out, overwrite, message in [
        (hf, True, f"--out {hf} is --hf {hf}, which this conversion reads: choose an --out outside {hf} (nothing was written)"),
        (hf / "ckpt", True, f"--out {hf / 'ckpt'} is inside --hf {hf}, which this conversion reads: choose an --out "
                            f"outside {hf} (nothing was written)"),
        (tmp_path, True, f"--out {tmp_path} contains --hf {hf}, which this conversion reads: choose an --out outside "
                         f"{hf} (nothing was written)"),
        (notes, True, f"--out {notes} is not empty and is not written by qwenpt: it is left as it is; choose a new or "
                      "empty --out (only an earlier output of `convert import` is replaced, with --overwrite)"),
        (tmp_path / "export", True, f"--out {tmp_path / 'export'} is not empty and is a qwenpt export: it is left as it "
                                    "is; choose a new or empty --out (only an earlier output of `convert import` is "
                                    "replaced, with --overwrite)"),
        (tmp_path / "earlier", False, f"--out {tmp_path / 'earlier'} holds an earlier qwenpt import: add --overwrite "
                                      "to replace it, or choose a new or empty --out (nothing was written)"),
        (tmp_path / "file", True, f"--out {tmp_path / 'file'} is a file, not a folder: choose another --out "
                                  "(nothing was written)"),
    ]:
        _refused(main, capsys, ["import", "--hf", str(hf), "--out", str(out), *(["--overwrite"] if overwrite else [])],
                 message, tmp_path)


def test_import_overwrite_swaps_in_the_new_import_whole(converted, tmp_path, capsys, monkeypatch):
    """--overwrite replaces an earlier import (one from before the marker too) by a folder written
    beside it and renamed in; a failure while writing leaves the earlier import as it was."""
    from qwenpt.convert import hf as hf_module
    from qwenpt.convert.__main__ import main
    from qwenpt.convert.hf import import_hf, model_config_of_checkpoint

    dense, tied = converted["dense_gqa"][1], converted["tied"][1]
    out = tmp_path / "ckpt"
    with _umask(0o027):
        assert main(["import", "--hf", str(dense), "--out", str(out)]) == 0
    assert _modes(out) == {(True, 0o750), (False, 0o640)}
    assert json.loads((out / "qwenpt_output.json").read_text()) == {"kind": "hf_import", "from": str(dense.resolve())}
    real_save = hf_module.save_on_demand

    def save_then_fail(model, folder, *args):
        real_save(model, folder, *args)
        assert folder.parent == tmp_path and folder != out and (folder / "metadata.json").is_file()
        assert _tree(out) == before  # the earlier import is untouched while the new one is written
        raise RuntimeError("disk full")

    before = _tree(out)
    everything = _tree(tmp_path)
    monkeypatch.setattr(hf_module, "save_on_demand", save_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        import_hf(tied, out, overwrite=True)
    assert _tree(tmp_path) == everything  # no half output, no temporary folder left
    monkeypatch.undo()

    (out / "qwenpt_output.json").unlink()  # an import written before the marker existed is still an import
    capsys.readouterr()
    with _umask(0o022):
        assert main(["import", "--hf", str(tied), "--out", str(out), "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"] == str(out)
    assert model_config_of_checkpoint(out).tie_embeddings  # the tied model's, not the earlier (untied) one's
    assert json.loads((out / "qwenpt_output.json").read_text()) == {"kind": "hf_import", "from": str(tied.resolve())}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert _modes(out) == {(True, 0o755), (False, 0o644)}


def test_export_overwrite_leaves_no_stale_shard(converted, tmp_path, capsys):
    """An --overwrite export replaces the earlier one whole: its single model.safetensors does not
    survive beside the new shards, and transformers loads the new weights. Files follow the umask."""
    import transformers

    from qwenpt.convert.__main__ import main

    _, dense_hf, dense_ckpt, _ = converted["dense_gqa"]
    ref, tied_hf, tied_ckpt, _ = converted["tied"]
    ckpt = shutil.copytree(dense_ckpt, tmp_path / "ckpt")
    hf = shutil.copytree(tied_hf, tmp_path / "hf")
    out = tmp_path / "out"
    with _umask(0o022):
        assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "qwenpt_output.json"]
    assert _modes(out) == {(True, 0o755), (False, 0o644)}
    capsys.readouterr()
    _refused(main, capsys, ["export", "--ckpt", str(tied_ckpt), "--out", str(out)],
             f"--out {out} holds an earlier qwenpt export: add --overwrite to replace it, or choose a new or empty "
             "--out (nothing was written)", tmp_path)
    _refused(main, capsys, ["export", "--ckpt", str(ckpt), "--out", str(ckpt), "--overwrite"],
             f"--out {ckpt} is --ckpt {ckpt}, which this conversion reads: choose an --out outside {ckpt} "
             "(nothing was written)", tmp_path)
    _refused(main, capsys, ["export", "--ckpt", str(tied_ckpt), "--out", str(hf), "--overwrite"],
             f"--out {hf} is not empty and is not written by qwenpt: it is left as it is; choose a new or empty "
             "--out (only an earlier output of `convert export` is replaced, with --overwrite)", tmp_path)
    _refused(main, capsys, ["export", "--ckpt", str(tied_ckpt), "--out", str(ckpt), "--overwrite"],
             f"--out {ckpt} is not empty and is a qwenpt import: it is left as it is; choose a new or empty "
             "--out (only an earlier output of `convert export` is replaced, with --overwrite)", tmp_path)
    with _umask(0o027):
        assert main(["export", "--ckpt", str(tied_ckpt), "--out", str(out), "--overwrite", "--max-shard-gib",
                     str(2 / 1024)]) == 0
    files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"]
    assert len(files) > 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*files, "model.safetensors.index.json", "config.json", "qwenpt_output.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf", "out"]
    assert _modes(out) == {(True, 0o750), (False, 0o640)}
    assert json.loads((out / "qwenpt_output.json").read_text()) == {"kind": "hf_export", "from": str(tied_ckpt.resolve())}
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    theirs = ref.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in back.state_dict().items())
    tokens = _tokens(ref.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(tokens).logits, ref(tokens).logits)


def test_import_refuses_non_finite_weights_naming_the_tensors(converted, tmp_path, capsys):
    """NaN/Inf in the safetensors end the import with one message naming the tensors and the counts,
    and the earlier import at --out (even with --overwrite) stays as it was."""
    from qwenpt.convert.__main__ import main
    from qwenpt.convert.hf import import_hf

    _, hf_dir, _, _ = converted["dense_gqa"]
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(hf_dir / "config.json", bad / "config.json")
    tensors = load_file(str(hf_dir / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"][0, :3] = float("nan")
    tensors["model.norm.weight"][5] = float("-inf")
    save_file(tensors, str(bad / "model.safetensors"))
    import_hf(hf_dir, tmp_path / "ckpt")
    message = (f"{bad}: 4 non-finite values (NaN or Inf) in 2 tensors: model.layers.0.mlp.up_proj.weight (3), "
               "model.norm.weight (1) (nothing was written); the checkpoint is damaged: download or copy it again")
    _refused(main, capsys, ["import", "--hf", str(bad), "--out", str(tmp_path / "ckpt"), "--overwrite"], message, tmp_path)
    _refused(main, capsys, ["import", "--hf", str(bad), "--out", str(tmp_path / "new")], message, tmp_path)
