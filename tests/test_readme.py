"""The README's library example runs as written and computes what its comments say."""

from __future__ import annotations

from pathlib import Path

import torch


def test_readme_library_example_runs():
    """The first Python block of README.md: ``state_logits`` of a row with a ``<bkspc>``
    equal plain forwards over each state's visible tokens, and ``generate``'s output has
    one log-probability and one forced flag per action."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)
    model, prompt, actions, bk = names["model"], names["prompt"], names["actions"], names["bk"]
    logits = names["logits"]  # [1, T, V]
    assert logits.shape == (1, len(prompt) + len(actions), model.config.vocab_size)
    visible: list[int] = list(prompt)
    with torch.no_grad():
        for t, action in enumerate(actions, start=len(prompt)):
            visible = visible[:-1] if action == bk else [*visible, action]
            plain = model(input_ids=torch.tensor([visible])).logits[0, -1]  # [V]
            torch.testing.assert_close(logits[0, t], plain, rtol=1e-4, atol=1e-5)
    assert visible == [*prompt, *actions[:1], *actions[3:]]  # "16", <bkspc>, "5" shows "15"
    out = names["out"]
    assert len(out.actions[0]) >= 1
    assert len(out.logprobs[0]) == len(out.forced[0]) == len(out.actions[0])
    assert not any(out.forced[0])  # noise_prob 0
