"""tinygrad-rnn new-cell: the package it writes, what it refuses, and (slow) the package
installed, tested with its own pytest, listed by `tinygrad-rnn cells`, uninstalled."""
import json
import os
import subprocess
import sys
import sysconfig

import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import scaffold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def fresh_registry(clean_plugins):
    yield


def run(*args):
    result = CliRunner().invoke(cli.main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_new_cell_writes_a_package_whose_names_all_derive_from_name(tmp_path):
    target = tmp_path / "pkg"
    result = run("new-cell", "my_janet", "--dir", str(target), "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["files"] == ["README.md", "pyproject.toml", "tests/test_my_janet.py", "tinygrad_rnn_my_janet.py"]
    assert made["class"] == "MyJanet" and made["distribution"] == "tinygrad-rnn-my-janet"
    pyproject = (target / "pyproject.toml").read_text()
    assert '[project.entry-points.tinygrad_rnn]\nmy_janet = "tinygrad_rnn_my_janet"' in pyproject
    assert 'py-modules = ["tinygrad_rnn_my_janet"]' in pyproject and 'name = "tinygrad-rnn-my-janet"' in pyproject
    assert "@parametrize_with_checks([MyJanet])" in (target / "tests" / "test_my_janet.py").read_text()
    assert "pip install -e ." in (target / "README.md").read_text()
    assert not [p for p in os.listdir(tmp_path) if p != "pkg"]  # no staging folder left behind


def test_the_written_cell_passes_check_cell(tmp_path):
    made = scaffold.new_cell("scaffolded_t", str(tmp_path / "pkg"))
    from tinygrad_rnn import load_plugin, testing
    load_plugin(os.path.join(made["path"], made["module"] + ".py"))
    report = testing.check_cell("scaffolded_t")
    assert report.ok, str(report)


@pytest.mark.parametrize("name,class_name", [("none", "NoneCell"), ("true", "TrueCell"), ("false", "FalseCell")])
def test_a_name_whose_class_would_be_a_keyword_gets_a_class_that_parses(tmp_path, name, class_name):
    made = scaffold.new_cell(name, str(tmp_path / "pkg"))
    assert made["class"] == class_name
    for path in ("tinygrad_rnn_" + name + ".py", "tests/test_" + name + ".py"):
        source = (tmp_path / "pkg" / path).read_text()
        compile(source, path, "exec")  # `class None(tr.Cell)` is a SyntaxError
        assert class_name in source


@pytest.mark.parametrize("name,match", [
    ("My-Cell", "must be a lower-case Python identifier"),
    ("9lives", "must be a lower-case Python identifier"),
    ("class", "must be a lower-case Python identifier"),
    ("gru", "cell name 'gru' is taken: a registered cell"),
])
def test_bad_or_taken_names_are_usage_errors(tmp_path, name, match):
    result = run("new-cell", name, "--dir", str(tmp_path / "pkg"))
    assert result.exit_code == 2 and match in result.stderr and "NAME" in result.stderr
    assert not os.path.exists(tmp_path / "pkg")


def test_a_name_an_importable_module_uses_is_taken(tmp_path, monkeypatch):
    (tmp_path / "tinygrad_rnn_shadow.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run("new-cell", "shadow", "--dir", str(tmp_path / "pkg"))
    assert result.exit_code == 2 and "module 'tinygrad_rnn_shadow' is already importable" in result.stderr


def test_a_folder_that_exists_and_is_not_empty_is_refused_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run("new-cell", "fresh", "--dir", str(tmp_path))
    assert result.exit_code == 2 and "exists and is not empty" in result.stderr and "--dir" in result.stderr
    assert os.listdir(tmp_path) == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert run("new-cell", "fresh", "--dir", str(tmp_path / "empty")).exit_code == 0
    assert run("new-cell", "fresh", "--dir", str(tmp_path / "keep.txt")).exit_code == 2


@pytest.mark.slow
def test_scaffold_install_test_list_uninstall(tmp_path):
    """End to end, in a throwaway virtual environment that sees the test environment's
    packages (a .pth line), so that installing never touches the environment others use."""
    made = scaffold.new_cell("scaffold_e2e", str(tmp_path / "pkg"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "test_environment.pth"), "w") as f:
        # addsitedir, not a bare path: the test environment's own .pth files (editable installs) count too
        f.write(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    env = dict(os.environ, PYTHONPATH=ROOT)

    def call(*args, cwd=None):
        proc = subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout
    # The pip of Python 3.11 (23.2) cannot resolve a local package and a plugin that needs it
    # in one command, and tinygrad-rnn is already importable here: no deps, no isolated build.
    call("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", made["path"])
    try:
        tests = call("-m", "pytest", "-v", "-p", "no:cacheprovider", made["path"], cwd=made["path"])
        assert "[scaffold_e2e-gradcheck] PASSED" in tests and " failed" not in tests, tests
        listing = call("-c", "import sys, cli; sys.argv = ['tinygrad-rnn', 'cells']; cli.main()")
        row = next(l for l in listing.splitlines() if l.startswith("scaffold_e2e "))
        assert "compiled" in row and "Gated unit" in row
        rows = json.loads(call("-c", "import sys, cli; sys.argv = ['tinygrad-rnn', 'cells', '--json']; cli.main()"))
        assert {r["name"]: r["distribution"] for r in rows}["scaffold_e2e"] == made["distribution"]
    finally:
        call("-m", "pip", "uninstall", "-q", "-y", made["distribution"])
    listing = call("-c", "import sys, cli; sys.argv = ['tinygrad-rnn', 'cells']; cli.main()")
    assert "scaffold_e2e" not in listing
