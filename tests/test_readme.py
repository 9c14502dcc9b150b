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


@pytest.mark.slow
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


def _cli_commands():
    """Every `tinygrad-rnn ...` command in the README's bash blocks (continuations joined)."""
    import shlex
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0] == "tinygrad-rnn":
                    commands.append(words[1:])
    return commands


def test_readme_cli_commands_parse(monkeypatch, clean_plugins):
    from click.testing import CliRunner

    import cli
    from tinygrad_rnn import training
    seen = []
    stub = {"cell": "lstm", "task": "adding", "seq_len": 2, "hidden": 2, "steps": 1, "seconds": 1.0,
            "steps_per_second": 1.0, "train_loss": 0.0, "eval_loss": 0.0, "baseline_loss": 0.0}
    monkeypatch.setattr(training, "train", lambda **kw: seen.append(kw) or stub)
    monkeypatch.setattr(training, "generate", lambda *a: seen.append(a) or "text")
    commands = _cli_commands()
    assert len(commands) >= 3
    for args in commands:
        if args[0] in ("train", "generate"):  # run, with the work stubbed out
            result = CliRunner().invoke(cli.main, args)
            assert result.exit_code == 0, (args, result.output)
        else:  # parsed and checked only: diagnose is run for real by .ci/run, a cluster sweep needs a cluster
            ctx = cli.main.make_context("tinygrad-rnn", list(args))
            pending = [*getattr(ctx, "_protected_args", []), *ctx.args]  # click 8.2+ keeps the name apart
            name, command, rest = cli.main.resolve_command(ctx, pending)
            command.make_context(name, rest, parent=ctx)
    assert len(seen) == len([a for a in commands if a[0] in ("train", "generate")])
