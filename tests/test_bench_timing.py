"""benchmarks/timing.py: the one protocol every benchmark against PyTorch times with."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import timing  # noqa: E402


def test_blocks_alternate_and_warm_up_before_timing():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = timing.blocked(fns, blocks=3, steps=2, warmup=1)
    # each block: 1 warm-up + 2 timed steps of one contender; order a b | b a | a b
    assert "".join(calls) == "aaa" "bbb" "bbb" "aaa" "aaa" "bbb"
    assert len(t["a"].blocks_ms) == len(t["b"].blocks_ms) == 3 and t["a"].steps == 2


def test_a_slow_first_step_after_a_switch_is_not_timed():
    """The step after the other contender's block pays for its spinning threads: the
    warm-up absorbs it, so the figure is the steady step time."""
    state = {"last": None}

    def make(name):
        def fn():
            time.sleep(0.02 if state["last"] != name else 0.002)
            state["last"] = name
        return fn
    t = timing.blocked({"a": make("a"), "b": make("b")}, blocks=2, steps=3, warmup=1)
    assert t["a"].min < 8 and t["b"].min < 8, t


def test_ratio_and_machine_line():
    a, b = timing.Timing("a", [2.0, 4.0, 3.0], 1), timing.Timing("b", [1.0, 1.0, 3.0], 1)
    assert timing.ratio_text(a, b).split() == ["2.00", "(3.00)"]
    assert timing.machine_line().startswith("CPU: ") and timing.cpu_name()
