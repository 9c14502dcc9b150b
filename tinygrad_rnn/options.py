"""The run options of ``train``, ``diagnose`` and ``sweep``, in one table.

Each ``Option`` row says what one run option is: its Python name (a ``TrainConfig`` field
and a ``tr.train`` keyword), its kind and range, its default and help, the commands that
take it (with what differs per command), whether a checkpoint records it (under which key)
and whether a resumed run may change it. From the table come:

- ``TrainConfig``'s fields and the validation of each (``check``, ``training.TrainConfig.check``);
- the resume conflicts (an option chosen now that differs from the checkpoint's setting);
- ``checkpoint.RUN_FIELDS``, what a checkpoint's header may hold (``run_fields``);
- the sweep's grid converters (``parse``: one string of ``--hidden 4,8`` to a value);
- ``cli.py``'s click options of ``train``, ``diagnose`` and ``sweep`` (``cli._run_options``);
- the CLI's wording of library errors: the library names Python arguments (``hidden=4``),
  and ``to_flags`` rewrites them as the command line's flags (``--hidden 4``).

Adding an option is one row here. For example::

    Option("grad_noise", "float", 0.0, "Add Gaussian noise of this scale to every gradient.",
           commands=("train",), saved=True, resumable=True),

then read it where the run uses it (``cfg.grad_noise`` in ``training.py``, ``settings["grad_noise"]``
when it is ``saved``). ``saved`` options are written to checkpoints under ``key`` (the name,
unless given), and older checkpoints without it read as ``old_default`` (the default, unless
given): what runs did before the option existed. ``resumable=False`` (the default for a
``saved`` option) makes ``train --resume`` refuse a chosen value that differs from the
checkpoint's. ``per`` overrides fields for one command (a default or help text that differs
there); ``grid=True`` makes it a ``sweep`` grid axis (repeatable, comma-separated values).
"""
import math
import numbers
import re
from dataclasses import dataclass, field, replace

from . import optim
from .errors import ConfigError

INIT_SCHEMES = ("pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "orthogonal", "identity")

# Integers past a C long overflow NumPy's conversions (a hand-edited checkpoint header with
# 10**30 in it ended in OverflowError); a real run never comes near it.
MAX_INT = 2 ** 63 - 1
# The first training step of 1,000 LSTM layers (hidden 4, T=10, batch 2) took 40 s on a Xeon
# core, building them 0.1 s: --layers 100000 sat silent for over an hour. Past this many
# layers a run is a typo, not an experiment.
MAX_LAYERS = 1000

INIT_HELP = ("Re-initialise before training. 'pytorch' (the default) keeps each cell's own init "
             "(PyTorch's for the built-ins; a plugin cell's self.param(init=...)); any other scheme "
             "goes to the recurrent (*hh*) weights, other matrices get xavier_uniform (or the scheme), "
             "vectors zeros.")

KINDS = ("int", "float", "choice", "name", "path", "flag", "options")
PYTHON_TYPES = {"int": int, "float": float, "choice": str, "name": str, "path": str, "flag": bool, "options": dict}


@dataclass(frozen=True)
class Option:
    """One run option (see the module docstring)."""

    name: str
    kind: str                  # one of KINDS: "name" is a registered cell or task, "options" a dict
    default: object
    help: str
    commands: tuple = ("train",)
    lo: float = None           # the range of an int or float (None: unbounded)
    hi: float = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = None      # a "choice"
    flag: str = None           # the CLI flag: --name-with-dashes unless given
    saved: bool = False        # a checkpoint records it (under ``key``)
    key: str = None
    old_default: object = None  # what a checkpoint without it did (``saved``); the default unless given
    resumable: bool = None     # may a resumed run change it? (default: not if saved)
    grid: bool = False         # a sweep grid axis
    multiple: bool = False     # the command takes a list of values (diagnose --cell, repeatable)
    metavar: str = None
    show_default: bool = False
    per: dict = field(default_factory=dict)  # command -> fields that differ there

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        if self.flag is None:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))
        if self.key is None:
            object.__setattr__(self, "key", self.name)
        if self.resumable is None:
            object.__setattr__(self, "resumable", not self.saved)

    def on(self, command):
        """This option as ``command`` takes it (its ``per`` fields applied)."""
        return replace(self, per={}, **self.per[command]) if command in self.per else self

    @property
    def nullable(self):
        return self.default is None

    @property
    def checkpoint_default(self):
        return self.default if self.old_default is None else self.old_default

    def what(self, value=None):
        """What a valid value is, in words: 'an integer >= 1', 'null or a finite number >= 0'
        (for ``value``, when that is an integer too large for any range: 'an integer in [1, 2**63 - 1]')."""
        if self.kind == "int" and past_c_long(value):
            return integer_what(self.lo, self.hi, value)  # not "null or ...": the value is an integer
        if self.kind == "int":
            what = integer_what(self.lo, self.hi)
        elif self.kind == "float":
            if self.hi is not None and self.hi <= 1:
                what = f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            else:
                what = f"a finite number {'>' if self.lo_open else '>='} {self.lo:g}"
                if self.hi is not None:
                    what += f" and <= {self.hi:g}"
        elif self.kind == "choice":
            what = f"one of {', '.join(self.choices)}"
        elif self.kind == "name":
            what = f"a {self.name} name"
        elif self.kind == "path":
            what = "a file path"
        elif self.kind == "flag":
            what = "true or false"
        else:
            what = "an object"
        return f"null or {what}" if self.nullable and self.kind != "path" else (
            "null or a file path" if self.kind == "path" else what)

    def valid(self, v):
        """Whether ``v`` is a valid value (as Python passes it or JSON reads it back)."""
        if v is None:
            return self.nullable
        if self.kind == "int":
            return (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= self.lo
                    and v <= (MAX_INT if self.hi is None else self.hi))
        if self.kind == "float":
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
                return False
            above = v > self.lo if self.lo_open else v >= self.lo
            below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
            return above and below
        if self.kind == "choice":
            return isinstance(v, str) and v in self.choices
        if self.kind == "name":
            return isinstance(v, str) and v != ""
        if self.kind == "path":
            return isinstance(v, str)
        if self.kind == "flag":
            return isinstance(v, bool)
        return isinstance(v, dict)


def _int(name, default, help, lo=1, **kw):
    return Option(name, "int", default, help, lo=lo, **kw)


def _float(name, default, help, lo=0, **kw):
    return Option(name, "float", default, help, lo=lo, **kw)


TD = ("train", "diagnose")
TDS = ("train", "diagnose", "sweep")

OPTIONS = (
    # the model and its task
    Option("cell", "name", "lstm", "Registered cell name (see below).", TDS, saved=True, grid=True,
           show_default=True, per={"diagnose": dict(default=None, multiple=True, show_default=False,
                                                    help="Cell to diagnose (repeatable). Default: rnn, lstm and gru."),
                                   "sweep": dict(help="Cells (repeatable or a,b,c). Default: rnn,lstm,gru.")}),
    Option("task", "name", "adding", "Registered task name (see below).", TDS, saved=True, grid=True,
           show_default=True, per={"diagnose": dict(help="Task whose loss the gradients are taken of."),
                                   "sweep": dict(help="Tasks. Default: adding.")}),
    Option("data", "path", None, "Data file for the text, series and classify tasks.", TD, saved=True),
    _float("eval_fraction", 0.1, "classify: the held-out share of the sequences (stratified by class).",
           lo_open=True, hi=1, hi_open=True, saved=True),
    _int("seq_len", 100, "Sequence length T of each training example.", lo=2, commands=TDS, saved=True, grid=True,
         show_default=True, per={"diagnose": dict(help="Sequence length T."),
                                 "sweep": dict(help="Sequence lengths. Default: 100.")}),
    _int("hidden", 64, "Hidden size.", commands=TDS, saved=True, grid=True, show_default=True,
         per={"sweep": dict(help="Hidden sizes. Default: 64.")}),
    _int("layers", 1, "Stacked layers.", hi=MAX_LAYERS, commands=TD, saved=True, show_default=True),
    # the optimisation
    _int("batch", 32, "Sequences per step.", commands=TDS, saved=True, show_default=True,
         per={"diagnose": dict(help="Sequences in the measured batch.")}),
    _int("steps", 1000, "Total steps; a resumed run continues up to it.", lo=0, commands=TDS, show_default=True,
         per={"diagnose": dict(default=0, help="Also diagnose after this many Adam steps (lr 1e-3, clip-norm 1).")
              , "sweep": dict(default=None, show_default=False,
                              help="Steps per point. Default: 1000 (train), 0 (diagnose).")}),
    Option("optimizer", "choice", "adam", "Optimiser.", ("train", "sweep"), choices=tuple(optim.OPTIMIZERS),
           saved=True, grid=True, show_default=True, per={"sweep": dict(help="Optimizers (train). Default: adam.")}),
    _float("lr", 1e-3, "Learning rate (> 0).", lo_open=True, hi=1e6, commands=("train", "sweep"), saved=True,
           grid=True, show_default=True, per={"sweep": dict(help="Learning rates. Default: 1e-3.")}),
    _float("clip_norm", None, "Scale gradients down to this global L2 norm.", hi=1e12, commands=("train", "sweep"),
           saved=True, grid=True,
           per={"sweep": dict(help="Gradient-norm clips, or none. Default: none (train), 1 (diagnose).")}),
    _float("clip_value", None, "Clamp every gradient element into [-X, X].", hi=1e12, saved=True),
    Option("init_scheme", "choice", "pytorch", INIT_HELP, TDS, choices=INIT_SCHEMES, flag="--init", saved=True,
           key="init", grid=True, show_default=True, per={"sweep": dict(help="Init schemes. Default: pytorch.")}),
    _float("weight_decay", 0.0, "L2 penalty.", hi=1e6, saved=True),
    _float("l1", 0.0, "L1 penalty.", hi=1e6, saved=True),
    _int("bptt", None, "Truncated BPTT chunk length (text, series).", saved=True),
    _int("seed", 0, "Seed for initialisation and batches (an integer >= 0).", lo=0, commands=TD, saved=True,
         show_default=True, per={"diagnose": dict(help="Seed for initialisation and data (an integer >= 0).")}),
    Option("device", "choice", "cpu", "Where the model trains.", TD, choices=("cpu", "cuda"),
           per={"diagnose": dict(help="Where the model runs (per-sample measures always run on the CPU).")}),
    # files
    Option("save", "path", None,
           "Write a checkpoint here at the end (it may replace a checkpoint, never another file)."),
    Option("resume", "path", None, "Continue this checkpoint's run (its model, task and settings) up to --steps."),
    Option("weights", "path", None, "Start from these weights (.safetensors): a PyTorch nn.LSTM/GRU/RNN state_dict, "
           "or a model from `tinygrad-rnn export`; every name and shape is checked against the model.", TDS,
           saved=True),
    Option("log", "path", None,
           "Append JSON Lines records here (a resumed run first drops the records past its step)."),
    _int("log_every", 50, "Steps between --log records.", show_default=True),
    _int("diagnose_every", None, "Also log per-step and per-parameter gradient norms every N steps."),
    Option("on_nonfinite", "choice", "error", "On a NaN/Inf loss or gradient: stop naming the step, or skip the "
           "update.", choices=("error", "skip"), show_default=True, saved=True, resumable=True),
    Option("cell_options", "options", None, "Cell constructor option, e.g. nonlinearity=relu (repeatable); typed "
           "and checked against the cell.", TDS, flag="--cell-option", saved=True, old_default={}),
    # the layers
    Option("bidirectional", "flag", False, "Bidirectional layers (not for next-step tasks).", TD, saved=True,
           per={"diagnose": dict(help="Bidirectional layers: norms for each direction.")}),
    _float("dropout", 0.0, "Dropout on the input of every layer but the first (training only).", hi=1, hi_open=True,
           saved=True),
    _int("embed", None, "Learn a DIM-wide embedding of the input tokens instead of one-hot (text).", metavar="DIM",
         saved=True),
    # the learning-rate schedule and early stopping
    Option("lr_schedule", "choice", "constant", "Learning-rate schedule (PyTorch's StepLR, CosineAnnealingLR, "
           "ReduceLROnPlateau).", choices=tuple(optim.SCHEDULES), saved=True, show_default=True),
    _int("warmup", 0, "Ramp the learning rate up linearly over the first N steps.", lo=0, metavar="N", saved=True),
    _int("lr_step_size", None, "step schedule: every N steps (default: a third of the steps after warmup).",
         metavar="N", saved=True),
    _float("lr_gamma", 0.1, "step and plateau schedules: the factor the rate is multiplied by.", lo_open=True, hi=1,
           saved=True, show_default=True),
    _int("lr_patience", 10, "plateau schedule: evaluations without improvement before lowering the rate.", lo=0,
         saved=True, show_default=True),
    _int("eval_every", None, "Measure the eval loss every N steps (log and progress).", metavar="N", saved=True),
    _int("patience", None, "Stop when the eval loss has not improved for K evaluations; keep the best model.",
         metavar="K", saved=True),
    _int("save_every", None, "Also write the --save checkpoint every N steps.", metavar="N"),
    Option("dtype", "choice", "float32", "Floating-point precision of the model and its training.",
           choices=("float32", "float64"), saved=True, show_default=True),
    # memory
    Option("remat", "flag", None, "Recompute activations in the backward, about sqrt(T) steps at a time (less "
           "memory, the same gradients). Default: on when the activations would not fit in memory.", TD,
           per={"diagnose": dict(help="Recompute activations in the backward, about sqrt(T) steps at a time (less "
                                      "memory, the same numbers). Default: on when the activations would not fit "
                                      "in memory.")}),
    _int("remat_every", None, "Recompute K steps at a time (implies --remat).", metavar="K", commands=TD),
)

BY_NAME = {o.name: o for o in OPTIONS}
BY_KEY = {o.key: o for o in OPTIONS}


def of(command):
    """The options ``command`` takes, as it takes them."""
    return [o.on(command) for o in OPTIONS if command in o.commands]


def check(name, value):
    """Raise ConfigError naming the Python argument if ``value`` is not valid for option ``name``."""
    option = BY_NAME[name]
    if not option.valid(value):
        raise ConfigError(f"{name} must be {option.what(value)}, got {shown(value)}")


def integer_what(lo, hi=None, value=None):
    """'an integer >= lo' (or 'in [lo, hi]'); for ``value``, when that is an integer too large
    for any range (NumPy's conversions overflow past a C long), 'an integer in [lo, 2**63 - 1]'."""
    if hi is None and past_c_long(value):
        return f"an integer in [{lo}, 2**63 - 1]"
    return f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"


def past_c_long(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > MAX_INT


def shown(value):
    """``value``'s repr, cut short: a 10**5-digit integer is not a message."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def run_fields():
    """Checkpoint config key -> (check, what it must be): every saved option."""
    return {o.key: (o.valid, o.what) for o in OPTIONS if o.saved}


def parse(name, text):
    """One value of a sweep grid axis from its text (``"4"``, ``"none"``); ValueError saying why not."""
    option = BY_NAME[name]
    if option.nullable and text.lower() == "none":
        return None
    if option.kind == "name":
        from .plugins import get_cell, get_task
        (get_cell if name == "cell" else get_task)(text)  # a KeyError naming the registered ones
        return text
    if option.kind == "choice":
        if text not in option.choices:
            raise ValueError(f"choose from {', '.join(option.choices)}")
        return text
    try:
        value = int(text) if option.kind == "int" else float(text)
    except ValueError:
        raise ValueError("not an integer" if option.kind == "int" else "not a number") from None
    if not option.valid(value):
        raise ValueError(f"must be {option.what()}")
    return value


def resume_conflict(option, chosen, saved, path):
    """The ConfigError for a non-resumable ``option`` chosen as ``chosen`` on resuming a run
    that has ``saved``."""
    return ConfigError(f"{option.name}={chosen!r} conflicts with the resumed run's {option.key} {saved!r} in "
                       f"{path!r}; drop {option.name}= to continue that run, or start a new one without resume=")


_PY_NAME = re.compile(r"(?<![\w\-.'\"])(" + "|".join(sorted((o.name for o in OPTIONS), key=len, reverse=True))
                      + r")=(True\b|[^\s,;:)]?)")


def to_flags(message):
    """A library message in the command line's words: ``hidden=4`` becomes ``--hidden 4``,
    ``drop seed=`` becomes ``drop --seed``."""
    return _PY_NAME.sub(_flag_words, message)


def _flag_words(match):
    option, value = BY_NAME[match.group(1)], match.group(2)
    if option.kind == "flag" and value == "True":
        return option.flag  # a flag has no value on the command line
    return option.flag + (" " + value if value else "")
