"""The README's library example runs as written."""

from __future__ import annotations

from pathlib import Path


def test_readme_library_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    exec(compile(code, "README.md", "exec"), {})
