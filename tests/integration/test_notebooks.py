"""The analysis notebooks execute top to bottom (nbclient) on the saved sweep tables, and what they
report equals the library's fits on the same tables."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pyarrow.parquet as pq
import pytest
from nbclient import NotebookClient

from qwenpt.scaling import fit_loss_law, fit_mixing_law

from conftest import ROOT

ANALYSIS = ROOT / "analysis"


def execute(name: str) -> tuple[nbformat.NotebookNode, dict]:
    nb = nbformat.read(ANALYSIS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: outputs must be stripped in git"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ANALYSIS)}}).execute()
    last = nb.cells[-1].outputs[-1]["text"].strip().splitlines()[-1]
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    return nb, {**json.loads(last), "_images": images}


@pytest.mark.slow
def test_size_data_scaling_notebook():
    _, summary = execute("size_data_scaling.ipynb")
    final = [r for r in pq.read_table(ANALYSIS / "data" / "size_tokens_tiny.parquet").to_pylist() if r["final"]]
    assert len(final) >= 12 and len({r["non_embedding_params"] for r in final}) >= 4
    direct = fit_loss_law([r["non_embedding_params"] for r in final], [r["tokens"] for r in final], [r["valid_loss"] for r in final], refine=4)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert summary["approach3"][k] == pytest.approx(getattr(direct, k), rel=1e-6), k
    assert summary["_images"] == 3  # two figures of the sweep, one of the OLMo ladder
    plain, improved = summary["olmo_relative_errors"], summary["olmo_improved_errors"]
    assert set(plain) == set(improved) == {"3B-0.5xC", "3B-1xC", "3B-2xC", "3B-5xC", "3B-10xC", "7B", "13B"}
    assert abs(plain["7B"]) < 0.025 and abs(improved["7B"]) < 0.015
    assert all(abs(improved[k]) < abs(plain[k]) for k in plain), (plain, improved)


@pytest.mark.slow
def test_data_mix_laws_notebook():
    _, summary = execute("data_mix_laws.ipynb")
    rows = [r for r in pq.read_table(ANALYSIS / "data" / "mixture_tiny.parquet").to_pylist() if r["final"]]
    assert summary["mixtures"] == len(rows) >= 5 and len(summary["languages"]) == 10
    groups = {"latin": ["de", "en", "es", "fr", "id", "it", "pt"], "ja": ["ja"], "zh": ["zh-cn", "zh-tw"]}
    r = np.array([[sum(row[f"mix_{l}"] for l in ls) for ls in groups.values()] for row in rows])
    law = fit_mixing_law(r, {l: [row[f"valid_loss_{l}"] for row in rows] for l in summary["languages"]}, list(groups))
    best = np.array([summary["best_mixture"][g] for g in groups])
    mean_loss = np.mean([law.laws[l].predict(best[None])[0] for l in summary["languages"]])
    assert summary["best_predicted"] == pytest.approx(mean_loss, rel=1e-6)
    assert sum(summary["best_mixture"].values()) == pytest.approx(1.0)
    assert summary["_images"] == 4  # three on the sweep, one on RegMix
    assert len(summary["regmix_spearman"]) == 13 and summary["regmix_spearman"]["pile_cc"] > 0.95
