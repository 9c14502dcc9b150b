"""``tinygrad-rnn new-cell NAME``: write an installable cell plugin package to start from.

The package has what ``plugins/mgu`` has, with every name derived from NAME once: a
``pyproject.toml`` with the ``tinygrad_rnn`` entry point, a module with a small working
cell, ``tests/`` running the contract checks (``tr.testing.parametrize_with_checks``) and
a README with the commands that matter. It is written to a temporary folder beside the
target and moved into place at the end, so a failure leaves nothing half-written.
"""
import importlib.util
import keyword
import os
import re
import shutil
import tempfile

from .errors import ConfigError
from .plugins import list_cells


class ScaffoldError(ConfigError):
    """The name or the folder for a new cell package cannot be used; the message says why,
    ``what`` which of the two ("name" or "dir")."""

    def __init__(self, message, what):
        super().__init__(message)
        self.what = what


def names(name):
    """Every name the package uses, derived from the cell's registry name."""
    class_name = "".join(p.capitalize() for p in name.split("_") if p) or name.capitalize()
    if keyword.iskeyword(class_name):  # 'none', 'true', 'false' would give `class None(...)`
        class_name += "Cell"
    return {"name": name, "class": class_name,
            "module": f"tinygrad_rnn_{name}", "distribution": f"tinygrad-rnn-{name.replace('_', '-')}"}


def check_name(name):
    """Refuse a name that is not a lower-case identifier, or that a cell or module already uses."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ScaffoldError(f"cell name {name!r} must be a lower-case Python identifier (letters, digits, "
                            "underscores, starting with a letter), e.g. 'janet' or 'my_gru'", "name")
    taken = {n for r in list_cells() for n in [r["name"], *r["aliases"]]}
    if name in taken:
        raise ScaffoldError(f"cell name {name!r} is taken: a registered cell already uses it "
                            "(tinygrad-rnn cells lists them); choose another", "name")
    module = names(name)["module"]
    if importlib.util.find_spec(module) is not None:
        raise ScaffoldError(f"cell name {name!r} is taken: a module {module!r} is already importable "
                            f"(pip uninstall it, or choose another name)", "name")


def new_cell(name, directory=None):
    """Write the package for cell ``name`` into ``directory`` (default
    ``./tinygrad-rnn-NAME``), which must not exist or be empty. Returns a dict: ``path``,
    ``files`` (relative paths), the derived names, and ``commands`` (what to run next)."""
    check_name(name)
    n = names(name)
    path = os.path.abspath(directory or n["distribution"])
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise ScaffoldError(f"{path!r} exists and is not a folder; give --dir a new or empty folder", "dir")
        if os.listdir(path):
            raise ScaffoldError(f"{path!r} exists and is not empty; give --dir a new or empty folder", "dir")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ScaffoldError(f"cannot create {path!r}: its parent folder {parent!r} does not exist", "dir")
    files = _files(n)
    try:
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}-", dir=parent)
    except OSError as e:
        raise ScaffoldError(f"cannot write in {parent!r}: {e.strerror or e}", "dir") from None
    try:
        for rel, text in files.items():
            target = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a package folder is not
        os.replace(staging, path)  # onto a missing or empty folder: all the files appear at once
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise ScaffoldError(f"cannot write {path!r}: {e.strerror or e}", "dir") from None
    return {**n, "path": path, "files": sorted(files), "commands": _commands(n, path)}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _commands(n, path):
    return [f"pip install -e {path}", f"python -m pytest {path}", f"tinygrad-rnn gradcheck --cell {n['name']}",
            "tinygrad-rnn cells"]


def _files(n):
    return {"pyproject.toml": PYPROJECT.format(**n), f"{n['module']}.py": MODULE.format(**n),
            f"tests/test_{n['name']}.py": TESTS.format(**n), "README.md": README.format(**n)}


PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.1.0"
description = "The {name} cell for tinygrad_rnn"
requires-python = ">=3.10"
dependencies = ["tinygrad-rnn"]

[project.optional-dependencies]
test = ["pytest>=7"]

# tinygrad_rnn finds the cell through this entry point once the package is installed.
[project.entry-points.tinygrad_rnn]
{name} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]
'''

MODULE = '''"""The {name} cell: a minimal gated unit to start from (replace the maths with yours).

The README of tinygrad_rnn explains each part: "Write your own cell" (the Cell class,
self.param and its init functions, what the compiler handles) and "Test your cell"
(the checks that tests/test_{name}.py runs).
"""
import tinygrad_rnn as tr


class {class}(tr.Cell):
    """Gated unit: f = sigmoid(W_f [x, h] + b_f), h' = (1 - f) h + f tanh(W_h [x, f h] + b_h)."""

    name = "{name}"     # the registry name: --cell {name}
    num_states = 1      # the state tuple step() gets and returns; LSTM has 2, (h, c); the output is state[0]

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        # init= takes a scheme's name or a function init(rng, shape, dtype) -> array
        self.w_f = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
        self.b_f = self.param((hidden_size,), init="zeros")
        self.w_h = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
        self.b_h = self.param((hidden_size,), init="zeros")

    def step(self, x, state):
        # x is (batch, input_size); each state is (batch, hidden_size). Written with Tensor
        # ops only, it is compiled into fused kernels (tinygrad-rnn compile --cell {name}).
        (h,) = state
        f = (tr.cat([x, h], axis=-1) @ self.w_f + self.b_f).sigmoid()
        h_tilde = (tr.cat([x, f * h], axis=-1) @ self.w_h + self.b_h).tanh()
        return ((1 - f) * h + f * h_tilde,)


@tr.hookimpl
def register_cells(register):
    register({class})
'''

TESTS = '''"""The cell contract, one pytest test per check: pytest -k gradcheck runs one of them.

A check that cannot pass for this cell by design goes in expected_failed_checks with
the reason, e.g. {{"batch_independence": "normalises over the batch"}}.
"""
from tinygrad_rnn.testing import parametrize_with_checks

from {module} import {class}


@parametrize_with_checks([{class}])
def test_{name}(cell, check):
    check(cell)
'''

README = '''# {distribution}

The `{name}` cell for tinygrad_rnn, as an installable plugin (made by `tinygrad-rnn new-cell {name}`).

```bash
pip install -e .            # install it (after tinygrad-rnn itself, in its own pip command)
python -m pytest            # the cell contract: one test per check (tests/test_{name}.py)
tinygrad-rnn cells          # {name} is listed; then: tinygrad-rnn diagnose --cell {name}
```

Edit `{module}.py` (the maths in `step`, the parameters in `__init__`); the tests keep
checking it against the contract: shapes, determinism, batch independence, padding,
float64 finite-difference gradients, the compiled kernels against the step path,
float32 against float64, and state_dict and checkpoint round trips.
'''
