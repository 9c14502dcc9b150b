"""Every Python snippet in the README runs as printed, each on its own (issue 9, item 10)."""
import importlib.util
import os
import re

import pytest

from tinygrad_rnn import plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_readme_snippet_runs_as_printed(i, capsys):
    code = SNIPPETS[i]
    if "import torch" in code and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch (the pinned test reference)")
    plugins.reset()
    try:
        namespace = {"__name__": f"readme_snippet_{i}"}
        exec(compile(code, f"README.md python snippet {i}", "exec"), namespace)
    finally:
        plugins.reset()
