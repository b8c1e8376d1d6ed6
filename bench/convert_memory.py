"""Peak memory and time of HF import / export on a large random Qwen model.

    python bench/convert_memory.py [--model qwen2.5_1.5b] [--dtype bfloat16] [--workdir /tmp/qwenpt-convert-bench]

Builds the model's Hugging Face twin with random weights (transformers, saved as safetensors), then
runs ``python -m qwenpt.convert import`` and ``export`` in their own processes and reads their peak
RSS; prints a table and writes bench/results/convert_memory.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MAKE_MODEL = """
import sys, torch, transformers, yaml
from qwenpt.config import ModelConfig
from qwenpt.convert.layouts.qwen2 import hf_config
name, dtype, out = sys.argv[1:]
m = ModelConfig(**yaml.safe_load(open(f"conf/model/{name}.yaml")))
fields = {k: v for k, v in hf_config(m).items() if k not in ("architectures", "model_type")}
torch.manual_seed(0)
model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**fields)).to(getattr(torch, dtype))
model.save_pretrained(out, max_shard_size="1GB")
print(sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def run(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5_1.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--workdir", default="/tmp/qwenpt-convert-bench")
    args = ap.parse_args()
    from qwenpt.config import ModelConfig

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    m = ModelConfig(**yaml.safe_load((ROOT / "conf" / "model" / f"{args.model}.yaml").read_text()))
    # the random model is made in its own process: a child inherits its parent's peak RSS on Linux
    # (exec keeps the high-water mark), so this process stays small for the measured ones
    make = subprocess.run([sys.executable, "-c", MAKE_MODEL, args.model, args.dtype, str(work / "hf")], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if make.returncode != 0:
        raise SystemExit(make.stdout[-3000:])
    size = int(make.stdout.strip().splitlines()[-1])
    imp = run([sys.executable, "-m", "qwenpt.convert", "import", "--hf", str(work / "hf"), "--out", str(work / "ckpt")])
    exp = run([sys.executable, "-m", "qwenpt.convert", "export", "--ckpt", str(work / "ckpt"), "--out", str(work / "hf_back"),
               "--max-shard-gib", "1"])
    result = {"model": args.model, "dtype": args.dtype, "model_gib": round(size / 1024**3, 3),
              "import": {k: imp[k] for k in ("peak_rss_gib", "seconds", "wall_s")},
              "export": {k: exp[k] for k in ("peak_rss_gib", "seconds", "wall_s", "files")}}
    print(f"{args.model} ({m.name}), {args.dtype}: weights {result['model_gib']:.2f} GiB")
    print(f"{'':8}{'peak RSS GiB':>14}{'x weights':>11}{'seconds':>9}")
    for step in ("import", "export"):
        r = result[step]
        print(f"{step:8}{r['peak_rss_gib']:>14.2f}{r['peak_rss_gib'] / result['model_gib']:>11.2f}{r['seconds']:>9.1f}")
    out = ROOT / "bench" / "results" / "convert_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
