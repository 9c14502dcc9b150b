"""Random cells written as users write ``step`` (tests/cellgen.py): compiled against the step
path, a fixed-seed sample; every cell the fuzzer ever broke, as a regression test.

``python benchmarks/fuzz_cells.py --count 1000`` runs thousands. A cell that breaks today's
compiler is marked ``xfail(strict=True)``: the fix turns it into an XPASS, which fails the
suite until the mark is removed (docs/fuzz_findings.md has the notes).
"""
import os
import textwrap

import numpy as np
import pytest

import cellgen
import tinygrad_rnn as tr

# Seeds whose cells compile and equal their step path on today's compiler: the CI sample. Kept small: a new cell's kernels
# take a few seconds to compile with a cold cache. Together they use every production of
# the grammar (test_the_sample_covers_the_grammar).
SAMPLE = [3, 9, 20, 29, 225]
# Compiled cells of the sample that also run on CUDA (Numba's simulator in CI) against the CPU.
CUDA_SAMPLE = [9, 20]


@pytest.mark.parametrize("seed", SAMPLE)
def test_random_cell_compiled_equals_step_path(seed):
    outcome = cellgen.check(cellgen.load(cellgen.generate(seed)))
    assert outcome.kind == "equal", f"seed {seed}: {outcome}\n{cellgen.generate(seed)}"


GRAMMAR = {  # production: a regular expression its source shows
    "input product": r"= x @ self\.p", "recurrent product": r"= s\d @ self\.p",
    "cat product": r"tr\.cat\(\[x, \w+\], axis=-1\) @", "product of an intermediate": r"= v\d+ @ self\.p",
    "inline operand": r"\(\w+ \+ self\.p\d+\) @", "slice": r"\[:, [^\]]*\]", "split": r"\.split\(",
    "cat of values": r"= tr\.cat\(\[v", "mean": r"\.mean\(axis=-1, keepdims=True\)",
    "sum": r"\.sum\(axis=-1, keepdims=True\)", "max": r"\.max\(axis=-1, keepdims=True\)",
    "where": r"tr\.where\(", "clip": r"\.clip\(", "pow": r"\*\* ", "div": r" / ", "sigmoid": r"\.sigmoid\(\)",
    "tanh": r"\.tanh\(\)", "relu": r"\.relu\(\)", "exp": r"\.exp\(\)", "log": r"\.log\(\)",
    "constant attribute": r"self\.(alpha|beta|dt|scale)\d", "two states": r"num_states = 2",
    "vector parameter": r"self\.param\(\(\w+,\)", "row parameter": r"self\.param\(\(1, ",
    "layer norm": r"\.mean\(axis=-1, keepdims=True\)\n.*\*\* 2\)\.mean",
}


def test_the_grammar_generates_every_production():
    import re
    sources = [cellgen.generate(s) for s in range(300)]
    for name, pattern in GRAMMAR.items():
        assert any(re.search(pattern, s) for s in sources), f"no cell of 300 has a {name}"
    assert cellgen.generate(7) == cellgen.generate(7)  # a seed reproduces its cell
    for seed in range(100):  # --flat: no product reads a recurrent product's result
        flat = cellgen.generate(seed, chain_products=False)
        products = set(re.findall(r"^\s+(v\d+) = .*\bs\d\b.*@ self\.p\d+$", flat, re.M))
        for operand in re.findall(r"^\s+v\d+ = (.*) @ self\.p\d+$", flat, re.M):
            assert not products & set(re.findall(r"v\d+", operand)), (seed, operand)


def test_the_sample_covers_the_grammar():
    import re
    sources = [cellgen.generate(s) for s in SAMPLE]
    missing = [name for name, pattern in GRAMMAR.items() if not any(re.search(pattern, s) for s in sources)]
    assert not missing, f"the CI sample misses {missing}"


_CALLS = [0]


class _ChangesAfterTheStepPath(tr.Cell):
    """Its step multiplies by 1 for the step path's first calls and by 2 afterwards, when the
    compiler traces it: compiled and step paths differ, and the check must say so."""
    name = "changes_after_the_step_path"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (h,) = state
        _CALLS[0] += 1
        scale = 1.0 if _CALLS[0] <= cellgen.SEQ * cellgen.LAYERS else 2.0
        return ((tr.cat([x, h], axis=-1) @ self.w * scale).tanh(),)


def test_the_check_reports_a_mismatch():
    _CALLS[0] = 0
    outcome = cellgen.check(_ChangesAfterTheStepPath)
    assert (outcome.kind, outcome.reason) == ("bug", "mismatch in output"), outcome


def test_the_check_reports_a_refusal_with_its_reason():
    source = textwrap.dedent('''
        import tinygrad_rnn as tr
        class NoRecurrence(tr.Cell):
            name = "no_recurrence"
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.w = self.param((input_size, hidden_size), init="xavier_uniform")
            def step(self, x, state):
                return ((x @ self.w).tanh(),)
    ''')
    outcome = cellgen.check(cellgen.load(source))
    assert (outcome.kind, outcome.reason) == ("refused", "no recurrence"), outcome


def test_messages_are_normalised_so_one_bug_counts_once():
    a = cellgen.normalise("TypingError: Failed in nopython mode\nNameError: name 'R8' is not defined")
    b = cellgen.normalise("TypingError: Failed in nopython mode\nNameError: name 'R13' is not defined")
    assert a == b == "NameError: name 'R<n>' is not defined"


def test_the_minimiser_keeps_the_failure_and_drops_the_rest():
    source = textwrap.dedent('''
        import tinygrad_rnn as tr
        class Dead(tr.Cell):
            name = "dead"
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.u = self.param((hidden_size, hidden_size), init="xavier_uniform")
                self.w = self.param((input_size, hidden_size), init="xavier_uniform")
            def step(self, x, state):
                (s0,) = state
                v1 = s0 @ self.u
                v2 = v1.tanh()
                v3 = x @ self.w
                return (v3.tanh(),)
    ''')
    kept = cellgen.minimise(source, lambda o: (o.kind, o.reason) == ("refused", "no recurrence"))
    assert "v1 =" not in kept and "v2 =" not in kept and "self.u" not in kept, kept
    assert "v3 = x @ self.w" in kept and "self.w = " in kept, kept


# ---- every cell the fuzzer broke (docs/fuzz_findings.md), minimised -----------------------------

# name -> (source, why today's compiler breaks it: a strict xfail; None once fixed). The
# four product-of-a-product cells crashed with NameError 'R<n>' at Numba typing, the open
# clip with NameError 'inf', until the compiler fixes of this issue.
FOUND = {
    "issue17_cell": ('''
        class C(tr.Cell):
            name = "c"
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.p0 = self.param((hidden_size,), init="ones")
                self.p1 = self.param((hidden_size, hidden_size), init="xavier_uniform")
                self.p2 = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
                self.p3 = self.param((input_size, 2 * hidden_size), init="xavier_uniform")
            def step(self, x, state):
                (s0,) = state
                v1 = (s0 + self.p0) @ self.p1
                v2 = tr.cat([x, v1], axis=-1) @ self.p2
                v3 = v1 + v2                      # never used
                v5 = (x @ self.p3).mean(axis=-1, keepdims=True)
                return ((v2 - v5).tanh(),)
    ''', None),  # fixed: a product of a product reads its G buffer
    "seed0_split_of_a_product_then_product": ('''
        class Cell0(tr.Cell):
            name = "fuzz_0"
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.p3 = self.param((hidden_size, 2 * hidden_size), init='uniform')
                self.p5 = self.param((hidden_size, hidden_size), init='uniform')
            def step(self, x, state):
                (s0,) = state
                H = self.hidden_size
                v5 = s0 @ self.p3
                v7, v8 = v5.split(H, axis=-1)
                v11 = v8 @ self.p5
                return (v11.sigmoid(),)
    ''', None),  # fixed: a product of a product reads its G buffer
    "seed17_cat_of_a_product_then_product": ('''
        class Cell17(tr.Cell):
            name = "fuzz_17"
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.p0 = self.param((hidden_size, hidden_size), init='kaiming_uniform')
                self.p2 = self.param((input_size + hidden_size, hidden_size), init='kaiming_uniform')
            def step(self, x, state):
                (s0,) = state
                v1 = s0 @ self.p0
                v4 = tr.cat([x, v1], axis=-1) @ self.p2
                return (v4.tanh(),)
    ''', None),  # fixed: a product of a product reads its G buffer
    "seed14_two_states_cat_of_a_product": ('''
        class Cell14(tr.Cell):
            name = "fuzz_14"
            num_states = 2
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.p1 = self.param((hidden_size, hidden_size), init='orthogonal')
                self.p2 = self.param((input_size + hidden_size, hidden_size), init='xavier_uniform')
            def step(self, x, state):
                s0, s1 = state
                v2 = s1 @ self.p1
                v5 = tr.cat([x, v2], axis=-1) @ self.p2
                v8 = (v5 * v5 + 1e-3) ** 0.5
                return ((1 - v8.sigmoid()) * s0 + v8.sigmoid() * s1.tanh(), v8.tanh())
    ''', None),  # fixed: a product of a product reads its G buffer
    "seed6_clip_with_an_open_bound": ('''
        class Cell6(tr.Cell):
            name = "fuzz_6"
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.p0 = self.param((1, hidden_size), init='normal')
                self.p1 = self.param((hidden_size, hidden_size), init='identity')
                self.p3 = self.param((input_size + hidden_size, hidden_size), init='xavier_uniform')
            def step(self, x, state):
                (s0,) = state
                v1 = (s0 + self.p0) @ self.p1
                v2 = v1 + 0.25
                v3 = s0.clip(0, None)
                v5 = tr.cat([x, v2], axis=-1) @ self.p3
                v6 = v3 ** 3
                v7 = v6 - v5
                return (v7.sigmoid(),)
    ''', None),  # fixed: inf/nan constants are literals
    "alias_state_of_a_second_stage_product": ('''
        class Alias(tr.Cell):
            name = "alias"
            num_states = 2
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.w = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
                self.u = self.param((hidden_size, hidden_size), init="xavier_uniform")
            def step(self, x, state):
                s0, s1 = state
                v = tr.cat([x, s0], axis=-1) @ self.w
                g = v.sigmoid() @ self.u
                return (g.tanh(), g)
    ''', None),  # fixed: a product's result as a state has its norm taken in its owning stage
    "flat239_state_is_a_product_read_by_another_op": ('''
        class Alias1(tr.Cell):
            name = "alias1"
            num_states = 2
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.u = self.param((hidden_size, hidden_size), init="xavier_uniform")
            def step(self, x, state):
                s0, s1 = state
                g = s0.tanh() @ self.u
                return (g, g.tanh())
    ''', None),  # fixed: likewise
}


def _found_params():
    for name, (body, broken_today) in FOUND.items():
        marks = [pytest.mark.xfail(strict=True, reason=broken_today)] if broken_today else []
        yield pytest.param(name, body, id=name, marks=marks)


@pytest.mark.parametrize("name,body", list(_found_params()))
def test_cell_the_fuzzer_broke(name, body):
    source = "import tinygrad_rnn as tr\n" + textwrap.dedent(body)
    outcome = cellgen.check(cellgen.load(source))
    assert outcome.kind in ("equal", "refused"), f"{name}: {outcome}"


# ---- CUDA against the CPU, in a subprocess under the simulator -----------------------------

def test_random_cells_on_cuda_match_cpu():
    """A subprocess, so that NUMBA_ENABLE_CUDASIM never leaks into the rest of the suite."""
    pytest.importorskip("numba.cuda")
    results = cellgen.check_cuda_in_subprocess([(s, cellgen.generate(s)) for s in CUDA_SAMPLE])
    assert results == {s: "equal" for s in CUDA_SAMPLE}, results
