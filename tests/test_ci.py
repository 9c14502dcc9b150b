"""CI runs the README's commands as printed: .ci/run reads them from README.md."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_block(heading):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    after = text[text.index(heading):]
    return re.search(r"```bash\n(.*?)```", after, re.S).group(1).strip()


def _ci_reads(heading):
    script = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    func = re.search(r"^readme_command\(\) \{.*?^\}", script, re.S | re.M).group(0)
    out = subprocess.run(["bash", "-c", f"{func}\nreadme_command {heading!r}"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_ci_runs_the_readme_commands_verbatim():
    for heading in ("Install and run the main job", "Install and run the tests"):
        assert _ci_reads(heading) == _readme_block(heading)
    script = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "pip install" not in script and "--upgrade" not in script  # nothing the README lacks
    assert "NUMBA_ENABLE_CUDASIM=1" in script and '"$status" -eq 5' in script


def test_readme_installs_local_plugins_after_the_package():
    # pip 23 (what `python3 -m venv` gives on 3.10 - 3.12) cannot resolve `-e .` and a local
    # plugin depending on it in one `pip install`: the package must be installed first.
    for command in re.split(r"&&", _readme_block("Install and run the tests")):
        words = command.split()
        if words[:2] == ["pip", "install"] and any(w.startswith("./plugins") for w in words):
            assert not any(w == "-e" or w.startswith(".[") or w.startswith('".[') for w in words), command
