"""The GPU check's CPU form: it runs in seconds and its JSON says what it checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_form_prints_one_passing_json_summary():
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1  # one JSON summary and nothing else on stdout
    summary = json.loads(lines[0])
    assert summary["gpu"] is False and "no GPU" in summary["note"]
    exact = summary["exactness"]
    for name in ("tiny_llama/float32", "tiny_llama/bfloat16", "tiny_gpt2/float32"):
        assert exact[name]["passed"] and exact[name]["probe_accepted"]
        assert exact[name]["relative_error"] <= exact[name]["tolerance"]
    assert exact["tiny_llama/float32"]["relative_error"] < 1e-5
    assert exact["passed"] and summary["paths"]["passed"] and summary["passed"]
    assert summary["paths"]["bf16_body_fp32_head"]["logits_dtype"] == "float32"
    train = summary["train"]
    assert train["batch"] == 32
    for method in ("mle", "sequencematch"):
        assert train[method]["step_s"] > 0 and train[method]["tokens_per_s"] > 0
    assert train["sequencematch_over_mle"] > 0
    assert summary["generate"]["batch"] == 64
    assert summary["generate"]["bkspc_generate_tokens_per_s"] > 0
    assert "skipped" in summary["multi_gpu"]
