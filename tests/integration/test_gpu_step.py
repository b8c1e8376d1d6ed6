"""What a GPU training step asks of the host, asserted without a GPU (bench/step_budget.py counts it): a
constant few host syncs per step, whatever the layers, micro-batches or documents, and document masking
at no more than 1.2x the kernel-like ops of unmasked attention. Both CI lanes run this: megatron-core 0.16
and 0.19 take different RoPE paths for packed sequences. Also the optimizer's foreach kernels against
megatron-core's own fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

SYNC_BUDGET = 16

_CASES = {  # name: (layers, seq, micro-batch, global batch, document_mask)
    "base": (2, 1024, 1, 2, True),
    "more layers": (4, 1024, 1, 2, True),
    "more micro-batches": (2, 1024, 1, 4, True),
    "more documents": (2, 4096, 2, 4, True),
    "more documents, unmasked": (2, 4096, 2, 4, False),
}

_SCRIPT = """
import json, sys
sys.path.insert(0, "bench")
import step_budget
out = {}
for name, (layers, seq, mbs, gbs, mask) in json.loads(sys.argv[1]).items():
    model = step_budget.narrow_model("qwen2.5_1.5b", seq) + [f"model.num_layers={layers}"]
    out[name] = step_budget.count_step(model, seq, mbs, gbs, mask, precision="fp32", workdir=sys.argv[2] + "/" + str(len(out)))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def budget(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("step_budget")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(_CASES), str(work)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
def test_host_syncs_per_step_are_few_and_constant(budget):
    base = budget["base"]
    assert base["host_syncs"] <= SYNC_BUDGET, base["sync_sites"]
    # the cases really vary what they say
    assert budget["more layers"]["layers"] == 2 * base["layers"]
    assert budget["more micro-batches"]["micro_batches"] == 2 * base["micro_batches"]
    assert budget["more documents"]["documents_per_micro_batch"] >= 3 * base["documents_per_micro_batch"] >= 6
    for name, case in budget.items():  # not one more sync for any of them
        assert case["sync_sites"] == base["sync_sites"], name
    assert budget["more layers"]["ops"] > base["ops"]  # the counter sees the extra layers' work


@pytest.mark.slow
def test_document_masking_costs_at_most_a_fifth_more_ops(budget):
    masked, unmasked = budget["more documents"], budget["more documents, unmasked"]
    assert masked["ops"] <= 1.2 * unmasked["ops"], (masked["top_ops"], unmasked["top_ops"])
    # masking changes the losses (the documents do not see each other), so both paths really ran
    assert masked["loss"] != unmasked["loss"]
