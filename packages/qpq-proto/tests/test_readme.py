"""The usage examples in the package README run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), flags=re.DOTALL)
    assert len(blocks) == 2
    namespaces: list[dict[str, object]] = [{}, {}]
    for block, namespace in zip(blocks, namespaces, strict=True):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    codec, quic = namespaces
    assert "events" in codec
    assert callable(quic["health"])
