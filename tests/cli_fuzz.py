"""A property-based fuzz of the CLI: generated invocations of every command, with options
drawn from the run-option table, mutated checkpoints, logs and data files, and broken
plugins, each run in a process of its own.

Every invocation must: exit 0, 1, 2 or 3; print no traceback and no bug note; leave its
input files as they were; leave no file behind but the outputs it was asked for; end
within ``TIMEOUT`` seconds. ``tests/test_cli_fuzz.py`` runs a fixed-seed sample of it in
the suite; for a release, run it long, in fresh processes (not forked)::

    python tests/cli_fuzz.py --examples 4000 --fresh      # about 3 s a case on 2 cores

It prints each failing invocation and the counts at the end; exit status 1 if any failed.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import safetensors.numpy
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tinygrad_rnn import options  # noqa: E402

TIMEOUT = 60
ESCAPED = 99  # the exit status of a forked case whose exception escaped the CLI
BUG_NOTE = "This is a bug in tinygrad-rnn"
TINY = {"--hidden": "2", "--seq-len": "4", "--batch": "2", "--steps": "1"}  # unless a drawn option says otherwise

PLUGINS = {  # file name -> source: plugins that break in every way the fuzz knows of
    "raise_base.py": "raise BaseException('at import')\n",
    "raise_genexit.py": "raise GeneratorExit\n",
    "raise_exit.py": "import sys\nsys.exit(4)\n",
    "raise_value.py": "raise ValueError('at import')\n",
    "init_base.py": None, "init_exit.py": None, "off_tape.py": None, "many_states.py": None, "good.py": None,
}
_CELL = '''import numpy as np
import tinygrad_rnn as tr


class Fuzzed(tr.Cell):
    """A cell the fuzz made."""
    name = "{name}"
    num_states = {num_states}

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(input_size, hidden_size, **kw)
        {init}
        self.w = self.param((hidden_size, hidden_size))

    def step(self, x, state):
        (h,) = state
        return ({step},)


@tr.hookimpl
def register_cells(register):
    register(Fuzzed)
'''
_CELLS = {
    "init_base.py": dict(name="initbase", num_states=1, init="raise BaseException('in __init__')", step="h"),
    "init_exit.py": dict(name="initexit", num_states=1, init="raise SystemExit(5)", step="h"),
    "off_tape.py": dict(name="offtape", num_states=1, init="pass", step="tr.Tensor(np.tanh(h.numpy()))"),
    "many_states.py": dict(name="manystates", num_states=10 ** 9, init="pass", step="h"),
    "good.py": dict(name="fuzzgood", num_states=1, init="pass", step="(h @ self.w).tanh()"),
}
PLUGIN_CELLS = [c["name"] for c in _CELLS.values()]


def make_fixtures(folder):
    """The files the fuzz draws from, made once: plugins, a text checkpoint and a log, data."""
    for name, source in PLUGINS.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(source if source is not None else _CELL.format(**_CELLS[name]))
    with open(os.path.join(folder, "corpus.txt"), "w") as f:
        f.write("the quick brown fox jumps over the lazy dog. " * 20)
    np.save(os.path.join(folder, "series.npy"), np.sin(np.arange(200.0) / 5))
    with open(os.path.join(folder, "series.csv"), "w") as f:
        f.write("\n".join(f"{v},{2 * v}" for v in range(60)))
    env = dict(os.environ, PYTHONPATH=ROOT, TINYGRAD_RNN_PLUGINS="")
    subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--task", "text", "--data", "corpus.txt",
                    "--cell", "gru", "--hidden", "3", "--seq-len", "5", "--batch", "2", "--steps", "3", "--bptt", "3",
                    "--save", "text.ckpt", "--log", "run.log", "--log-every", "1"],
                   cwd=folder, env=env, check=True, capture_output=True)


# ---- strategies ---------------------------------------------------------------------------
BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e309", str(10 ** 30), "x", "", "0x10", "1_000"]
SMALL = {"hidden": (1, 4), "seq_len": (2, 6), "batch": (1, 4), "layers": (1, 2), "steps": (0, 3), "embed": (1, 3)}


def _mostly(good, bad):
    """``good`` nine times in ten: a case whose every option is wrong only tests click."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


def _int_values(option):
    lo, hi = SMALL.get(option.name, (option.lo, option.lo + 5))
    return _mostly(st.integers(lo, hi).map(str), st.sampled_from(BAD_NUMBERS))


def _float_values(option):
    good = ["0", "1e-3", "0.5", "1", "0.1"] if option.hi is None or option.hi >= 1 else ["0.2", "0.5"]
    if option.lo_open:
        good.remove("0")
    return _mostly(st.sampled_from(good), st.sampled_from(BAD_NUMBERS + ["1e6", "1e12", "1e13"]))


def _value(option, command, files):
    if option.kind == "int":
        return _int_values(option)
    if option.kind == "float":
        return _float_values(option)
    if option.kind == "choice":
        return _mostly(st.sampled_from(list(option.choices)), st.sampled_from(["bogus", ""]))
    if option.kind == "name":
        if option.name == "cell":
            return _mostly(st.sampled_from(["rnn", "lstm", "gru", "mgu"]), st.sampled_from(PLUGIN_CELLS + ["nope", ""]))
        return _mostly(st.sampled_from(["adding", "copy", "sum", "sine", "text"]), st.sampled_from(["series", "nope"]))
    if option.kind == "path":
        return st.sampled_from(files)
    if option.kind == "options":
        return st.sampled_from(["nonlinearity=relu", "nonlinearity=sigmoid", "bogus=1", "=", "nonlinearity=",
                                "nonlinearity=" + "x" * 300])
    return st.just(None)  # a flag


@st.composite
def run_options(draw, command, files):
    """Options of ``command`` from the table: each drawn or left out, tiny sizes by default."""
    args, given = [], set()
    for option in options.of(command):
        if option.kind == "options":
            if draw(st.integers(0, 5)) == 0:
                args += [option.flag, draw(_value(option, command, files))]
            continue
        if draw(st.integers(0, 6)) != 0:  # most options left out: combinations stay readable
            continue
        given.add(option.flag)
        value = draw(_value(option, command, files))
        if option.kind == "flag":
            args.append(option.flag)
        elif command == "sweep" and option.grid:
            args += [option.flag, ",".join(draw(st.lists(_value(option, command, files), min_size=1, max_size=2)))]
        else:
            args += [option.flag, value]
    for flag, value in TINY.items():
        if flag not in given and any(o.flag == flag for o in options.of(command)):
            args += [flag, value]
    return args


@st.composite
def mutation(draw):
    """How to spoil a copy of a file: (kind, details)."""
    kind = draw(st.sampled_from(["header", "flip", "truncate", "none", "log_line"]))
    if kind == "header":
        path = draw(st.sampled_from(["step", "config.hidden", "config.seed", "config.layers", "config.lr",
                                     "config.bptt", "config.vocab", "config.cell", "config.dropout",
                                     "rng.state.state", "init_rng.state.state", "scheduler.last_epoch",
                                     "early_stop.best_step", "config.cell_options", "config.unknown"]))
        value = draw(st.sampled_from([10 ** 30, -(10 ** 30), 2 ** 63, -1, 0, 1.5, "x", None, [], {}, True,
                                      float("inf"), 10 ** 400]))
        return kind, (path, value)
    if kind in ("flip", "truncate"):
        return kind, draw(st.floats(0, 1))
    if kind == "log_line":
        return kind, draw(st.sampled_from(['{"step": 1e999}\n', "not json\n", '{"step": -5}\n',
                                           '{"step": %d, "loss": 1}\n' % 10 ** 30, "\x00\xff\n", "[]\n"]))
    return kind, None


def _metadata(path):
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        return f.metadata()


def mutate(src, dst, how):
    kind, detail = how
    shutil.copy(src, dst)
    if kind == "header" and src.endswith(".ckpt"):
        zipped = open(src, "rb").read(2) == b"PK"  # an .npz checkpoint of an earlier version
        if zipped:
            with zipfile.ZipFile(src) as zf:
                members = {n: zf.read(n) for n in zf.namelist()}
            meta = json.loads(np.load(io.BytesIO(members["__meta__.npy"])).tobytes())
        else:
            arrays, meta = safetensors.numpy.load_file(src), json.loads(_metadata(src)["tinygrad_rnn"])
        path, value = detail
        *parents, leaf = path.split(".")
        d = meta
        for p in parents:
            d = d.setdefault(p, {}) if isinstance(d, dict) else {}
        if isinstance(d, dict):
            d[leaf] = value
        if not zipped:
            safetensors.numpy.save_file(arrays, dst, metadata={"tinygrad_rnn": json.dumps(meta)})
            return
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        members["__meta__.npy"] = buf.getvalue()
        with zipfile.ZipFile(dst, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, data)
    elif kind in ("flip", "truncate"):
        data = bytearray(open(src, "rb").read())
        at = int(detail * (len(data) - 1))
        if kind == "flip":
            data[at] ^= 0xFF
        else:
            del data[at:]
        open(dst, "wb").write(bytes(data))
    elif kind == "log_line":
        with open(dst, "a") as f:
            f.write(detail)


COMMANDS = ("train", "diagnose", "generate", "compile", "gradcheck", "cells", "plugins", "sweep")


@st.composite
def invocation(draw, commands=COMMANDS):
    """(argv, env, mutations): one generated command line, its TINYGRAD_RNN_PLUGINS, and how
    to spoil the copies of the checkpoint, log and data it reads (made in its own folder)."""
    command = draw(st.sampled_from(commands))
    files = ["ck.ckpt", "run.log", "data.txt", "series.npy", "series.csv", "missing.ckpt", "/dev/null", ".",
             "new.ckpt", "new.log", "good.py", "sub/none.ckpt", ""]
    argv = []
    if draw(st.integers(0, 5)) == 0:
        argv += ["--plugin", draw(st.sampled_from(sorted(PLUGINS) + ["no_such_plugin", "missing.py"]))]
    env = {}
    if draw(st.integers(0, 4)) == 0:
        env["TINYGRAD_RNN_PLUGINS"] = os.pathsep.join(draw(st.lists(st.sampled_from(sorted(PLUGINS)),
                                                                    min_size=1, max_size=2)))
    argv.append(command)
    if command in ("train", "diagnose"):
        argv += draw(run_options(command, files))
    elif command == "sweep":  # tiny grids on one local worker, always diagnose mode: a Dask cluster per case
        argv += ["--mode", "diagnose", "--workers", "1", "--out", draw(st.sampled_from(["out.jsonl", "run.log"])),
                 "--cell", draw(st.sampled_from(["rnn", "gru,rnn", "nope", "rnn,,gru"])),
                 "--seq-len", draw(st.sampled_from(["3", "1", "x", "3,4"])), "--hidden", "2", "--batch", "2"]
    elif command == "generate":
        argv += ["--checkpoint", draw(st.sampled_from(["ck.ckpt", "missing.ckpt", "data.txt", "run.log"])),
                 "--length", draw(st.sampled_from(["0", "5", "-1", "x", str(10 ** 7)])),
                 "--temperature", draw(st.sampled_from(["1", "0", "1e-300", "nan", "100", "101"]))]
        if draw(st.booleans()):
            argv += ["--prime", draw(st.sampled_from(["the ", "\u2603", "", "zzz"]))]
    elif command == "compile":
        argv += ["--cell", draw(st.sampled_from(["rnn", "gru", "nope"] + PLUGIN_CELLS)),
                 "--hidden", draw(st.sampled_from(["2", "0", "x"])),
                 "--target", draw(st.sampled_from(["cpu", "cuda"]))]
        if draw(st.booleans()):
            argv.append("--source-only")
    elif command == "gradcheck":
        argv += ["--cell", draw(st.sampled_from(["rnn", "nope"] + PLUGIN_CELLS)),
                 "--seq-len", draw(st.sampled_from(["2", "0"])), "--hidden", "2"]
    if command in ("cells", "plugins") or draw(st.integers(0, 4)) == 0:
        if "--json" not in argv and command not in ("compile", "gradcheck", "generate", "sweep"):
            argv.append("--json")
    spoil = {name: draw(mutation()) for name in ("ck.ckpt", "run.log", "data.txt")}
    return argv, env, spoil


# ---- one case -----------------------------------------------------------------------------
def _digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _listing(folder):
    return {os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names}


def _outputs(argv):
    """The files the command was asked to write: --save, --log, --out, --plot."""
    out = set()
    for flag in ("--save", "--log", "--out", "--plot"):
        for i, a in enumerate(argv[:-1]):
            if a == flag:
                out.add(os.path.normpath(argv[i + 1]))
    return out


def prepare(fixtures, folder, spoil):
    for name in os.listdir(fixtures):
        if name.endswith(".py") or name.startswith("series"):
            shutil.copy(os.path.join(fixtures, name), folder)
    mutate(os.path.join(fixtures, "text.ckpt"), os.path.join(folder, "ck.ckpt"), spoil["ck.ckpt"])
    mutate(os.path.join(fixtures, "run.log"), os.path.join(folder, "run.log"), spoil["run.log"])
    mutate(os.path.join(fixtures, "corpus.txt"), os.path.join(folder, "data.txt"), spoil["data.txt"])


def _run_forked(argv, env, folder, timeout):
    """Run the CLI in a forked child (no interpreter start-up, no imports): (status, stdout, stderr)."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = ESCAPED
        try:
            os.chdir(folder)
            os.environ.pop("TINYGRAD_RNN_PLUGINS", None)
            os.environ.update(env)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
            sys.stdin = io.StringIO("")
            import cli
            from tinygrad_rnn import plugins
            plugins.reset()
            cli.main.main(argv, prog_name="tinygrad-rnn", standalone_mode=True)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: B036 (what escaped the CLI is the finding)
            import traceback
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.02)
    out.seek(0)
    err.seek(0)
    code = None if status is None else (os.waitstatus_to_exitcode(status))
    return code, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


def _run_fresh(argv, env, folder, timeout):
    full = dict(os.environ, PYTHONPATH=ROOT)
    full.pop("TINYGRAD_RNN_PLUGINS", None)
    full.update(env)
    try:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *argv], cwd=folder, env=full,
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or ""
    return r.returncode, r.stdout, r.stderr


def check_case(fixtures, argv, env, spoil, fresh=False, timeout=TIMEOUT):
    """Run one invocation in a folder of its own; return a list of the checks it broke."""
    folder = tempfile.mkdtemp(prefix="tgr-fuzz-")
    try:
        prepare(fixtures, folder, spoil)
        before = _listing(folder)
        outputs = _outputs(argv)
        inputs = {n: _digest(os.path.join(folder, n)) for n in before if n not in outputs}
        code, out, err = (_run_fresh if fresh else _run_forked)(argv, env, folder, timeout)
        broken = []
        if code is None:
            broken.append(f"hang: no exit within {timeout} s")
        elif code not in (0, 1, 2, 3):
            broken.append(f"exit status {code}")
        if "Traceback" in out + err or BUG_NOTE in err:
            broken.append("traceback: " + (err.strip().splitlines() or [""])[-1][:300])
        if code in (1, 2) and not err.strip():
            broken.append(f"exit {code} without a message")
        changed = sorted(n for n, d in inputs.items() if _digest(os.path.join(folder, n)) != d
                         and not (n == "run.log" and "run.log" in outputs))
        if changed:
            broken.append(f"changed inputs {changed}")
        left = sorted(n for n in _listing(folder) - before if os.path.normpath(n) not in outputs
                      and not n.startswith("__pycache__") and "/__pycache__/" not in n and "__pycache__" not in n)
        if left:
            broken.append(f"left files {left}")
        return broken, code
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="a fresh interpreter per case (slower, closer to use)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT)
    args = parser.parse_args()
    from hypothesis import HealthCheck, given, seed, settings

    fixtures = tempfile.mkdtemp(prefix="tgr-fuzz-fixtures-")
    make_fixtures(fixtures)
    counts = {"cases": 0, "held": 0, "broke": 0}
    exits = {}

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[__import__("hypothesis").Phase.generate])
    @given(invocation())
    def case(inv):
        argv, env, spoil = inv
        broken, code = check_case(fixtures, argv, env, spoil, fresh=args.fresh, timeout=args.timeout)
        counts["cases"] += 1
        exits[code] = exits.get(code, 0) + 1
        if broken:
            counts["broke"] += 1
            print(f"BROKE {broken}\n  env {env} argv {argv}\n  spoil {spoil}", flush=True)
        else:
            counts["held"] += 1

    t0 = time.perf_counter()
    try:
        case()
    finally:
        shutil.rmtree(fixtures, ignore_errors=True)
    print(f"{counts['cases']} invocations in {time.perf_counter() - t0:.0f} s: the checks held in {counts['held']}, "
          f"{counts['broke']} broke one; exit statuses {dict(sorted(exits.items(), key=str))}")
    sys.exit(1 if counts["broke"] else 0)


if __name__ == "__main__":
    main()
