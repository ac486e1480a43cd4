"""metrics.jsonl splits r, V and log pi by kind of transition and says which term moves the
policy (each term's share of the gradient at the logits)."""

from __future__ import annotations

import json

import pytest
from test_trainer import run, small_config


def test_metrics_split_the_transitions_and_share_the_gradient(tmp_path):
    config = small_config(tmp_path, "sm", method="sequencematch", steps=3, mle_warmup_steps=1,
                          p_noise=0.3, value_head="normalised")  # fmt: skip
    run(config)
    lines = [json.loads(x) for x in (tmp_path / "sm" / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if "loss" in line]
    assert len(train) == 3
    for line in train:
        assert line["data/token/logp"] < 0 and line["data/token/n"] > 0
        assert line["data/bkspc/n"] > 0 and line["data/bkspc/logp"] < 0
    online = [line for line in train if line["phase"] == "sequencematch"]
    assert online
    for line in online:
        assert {"data/eos/r", "data/eos/v", "model/all/r", "model/all/logp"} <= set(line)
        shares = {k: v for k, v in line.items() if k.startswith("grad_share/")}
        assert set(shares) == {f"grad_share/{t}" for t in ("mle", "imitation", "value",
                                                            "regulariser")}  # fmt: skip
        assert sum(shares.values()) == pytest.approx(1.0)
        # under the normalised reading the value term acts on b(s) alone, never on the policy
        assert shares["grad_share/value"] == 0.0
