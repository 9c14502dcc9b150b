"""The training loop behind ``tinygrad-rnn train``, usable from Python as ``tr.train``.

A run is a ``TrainConfig`` (one field per option of ``train``); ``fit`` runs it and returns
the summary, the trained model and its task. ``_Run`` holds a run's state: ``setup`` builds
or resumes it (``checkpoint.restore``), ``loop`` trains step by step, ``finish`` saves
(``checkpoint.snapshot``) and evaluates.
"""
import difflib
import math
import numbers
import os
import sys
import time
from dataclasses import dataclass, field, fields, make_dataclass

import numpy as np

from . import checkpoint, diagnostics, init, limits, optim, options, safeio
from .cell_options import check_cell_options
from .errors import ConfigError, Error
from .model import SequenceModel
from .plugins import get_cell, get_task, plugin_files, raise_if_user_code, reraise_interrupt
from .remat import check_remat
from .tape import no_grad
from .tensor import Tensor

INIT_SCHEMES = options.INIT_SCHEMES


class TrainingError(Error, RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, say); the message says where."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C: the run stopped after its last whole step (and saved it, with ``save``)."""


def _chosen(cfg, option):
    """Whether the run asks for ``option``'s value: named in ``explicit`` or not its default."""
    value = getattr(cfg, option.name)
    if option.name == "lr_step_size" and value is None:
        return False  # None asks for the computed default, which the checkpoint holds
    return option.name in cfg.explicit or value != option.default


def _check_resume_conflicts(cfg, resumed, path):
    """An option chosen now (``_chosen``) that a resumed run may not change and that differs
    from the checkpoint's setting is an error naming it."""
    for option in options.OPTIONS:
        if not option.saved or option.resumable or not _chosen(cfg, option):
            continue
        mine, theirs = getattr(cfg, option.name), resumed.get(option.key, option.checkpoint_default)
        if option.kind == "options":
            mine, theirs = mine or {}, theirs or {}
        if mine == theirs:
            continue
        if option.name == "data" and mine and theirs and (safeio.same_file(mine, theirs) or not os.path.exists(theirs)):
            continue  # the same file, or the run's file has moved: its vocabulary still guards the mapping
        raise options.resume_conflict(option, mine, theirs, path)


def setting(config, key):
    """A checkpoint's setting ``key``, or what runs did before it was recorded."""
    return config.get(key, options.BY_KEY[key].checkpoint_default)


def _check_model_size(config, task, remat=None):
    """Refuse, before allocating, a model or batch that cannot fit in memory: first as if
    the cell held one matrix (nothing built), then with its own count (two tiny cells built).
    Returns the ``remat`` to build with: ``None`` (automatic) becomes True, with a note on
    stderr, when only recomputation makes the activations fit."""
    itemsize = np.dtype(config.get("dtype", "float32")).itemsize
    T, batch = config["seq_len"], config.get("batch", 1)
    sizes = f"hidden={config['hidden']} layers={config['layers']} seq_len={T} batch={batch}"
    lean_kept = 2 * math.sqrt(T) / T  # remat=True keeps about sqrt(T) steps' values and sqrt(T) states
    for gates in (1, None):
        gates = gates or _gates(get_cell(config["cell"]), config.get("cell_options") or {})
        size = lambda kept=1.0: limits.model_bytes(task.input_size, config["hidden"], config["layers"], T,  # noqa: E731
                                                   batch, task.output_size, gates, itemsize, steps_kept=kept)
        need = size()
        if remat is None and need > limits.available_memory() and size(lean_kept) <= limits.available_memory():
            print(f"note: {sizes} needs about {limits.human_bytes(need)} for activations, more than the "
                  f"{limits.human_bytes(limits.available_memory())} available: recomputing them (--remat)",
                  file=sys.stderr)
            remat = True
        limits.check_fits(size(lean_kept) if remat else need, sizes, at_least=gates == 1)
    return remat


SCHEDULE_KEYS = ("lr_schedule", "warmup", "lr_step_size", "lr_gamma", "lr_patience", "eval_every", "patience")


def _gates(cls, cell_options):
    """How many hidden x hidden matrices the cell holds per layer and direction (1 for an
    Elman RNN, 3 a GRU, 4 an LSTM): its parameter count's h^2 coefficient, measured by
    building it at hidden sizes 4 and 8 (input size 1), with the initialisers' generator
    left as it was. A cell that cannot be built that small counts as an LSTM."""
    counts = []
    try:
        with init.seeded(0):
            for hidden in (4, 8):
                counts.append(sum(p.data.size for p in cls(1, hidden, **cell_options).parameters()))
    except Exception:  # noqa: BLE001 (building the model reports the cell's own error)
        return 4
    return max(1, round((counts[1] - 2 * counts[0]) / 32))  # a h^2 + b h: (c(8) - 2 c(4)) / (64 - 32) = a


def remat_options(remat):
    """``tr.nn.RNN``'s ``remat`` (None, True or K steps) as the run options ``remat`` and ``remat_every``."""
    remat = check_remat(remat)
    every = remat if remat is not None and remat is not True else None
    return {"remat": None if remat is None else True, "remat_every": every}


def build(config, remat=None):
    """Task and model from a config dict (what checkpoints store); ``remat`` as ``tr.nn.RNN``'s
    (None: switched on when the activations would not fit otherwise)."""
    task_cls = get_task(config["task"])
    vocab = {"vocab": config["vocab"]} if config.get("vocab") else {}
    vocab.update({k: setting(config, k) for k in getattr(task_cls, "run_options", ())})  # classify: eval_fraction
    try:
        task = task_cls(seq_len=config["seq_len"], data=config.get("data"), **vocab)
    except BaseException as e:  # a plugin task may raise SystemExit or a bare BaseException too
        reraise_interrupt(e)
        _raise_from_task_code(e, task_cls, "while building the task")
        raise
    return task, build_model(config, task, remat)


def build_model(config, task, remat=None):
    """The model of a config dict for ``task`` (sizes checked before anything is allocated)."""
    cell_cls = get_cell(config["cell"])
    opts = {k: setting(config, k) for k in ("bidirectional", "dropout", "embed", "cell_options")}
    if opts["embed"] and not task.tokens:
        raise ConfigError(f"embed={opts['embed']} needs a task whose inputs are tokens (text), not {task.name!r}")
    if opts["bidirectional"] and task.forecast:
        raise ConfigError(f"bidirectional=True cannot train on task {task.name!r}: its target at step t is "
                          "the input at t+1, which the reverse direction would read")
    task.token_input = bool(opts["embed"])
    remat = _check_model_size(config, task, remat)
    init.manual_seed(config["seed"])
    try:
        model = SequenceModel.for_task(config["cell"], task, config["hidden"], config["layers"],
                                       dtype=config.get("dtype", "float32"), bidirectional=opts["bidirectional"],
                                       dropout=opts["dropout"], embed=opts["embed"], **opts["cell_options"])
        if config.get("init", "pytorch") != "pytorch":
            model.rnn.reset_parameters(config["init"])
        model.rnn.remat = check_remat(remat)
    except BaseException as e:  # a plugin cell may raise SystemExit or a bare BaseException too
        reraise_interrupt(e)
        raise_if_user_code(e, "cell", cell_cls, "while building the model")
        raise
    if config.get("weights"):  # weights trained elsewhere replace the initialisation
        from . import weights
        weights.load(config["weights"], model, config)
    if config.get("device", "cpu") != "cpu":
        model.to(config["device"])
    return model


def evaluate(model, task, device="cpu"):
    """Loss on the task's fixed eval set, in eval mode (no dropout)."""
    if hasattr(task, "score"):  # classify: the whole held-out split, in chunks
        return task.score(model, "eval", device)[0]
    x, y = task.eval_set()
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            pred, _ = model(Tensor(x, device=device))
            return float(task.loss(pred, y).item())
    finally:
        model.train(was_training)


class _TrainConfigMethods:
    @property
    def remat_setting(self):
        """``tr.nn.RNN``'s remat for this run: ``remat_every`` K, else ``remat`` (None: when memory needs it)."""
        return self.remat_every or self.remat

    def check(self):
        """Raise ConfigError naming the first invalid or conflicting field."""
        for option in options.OPTIONS:
            if option.name != "remat":  # remat may also be K steps, as tr.nn.RNN's
                options.check(option.name, getattr(self, option.name))
        try:
            check_remat(self.remat)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if self.lr_schedule == "plateau" and not self.eval_every:
            raise ConfigError("lr_schedule='plateau' lowers the rate when the eval loss stalls: give eval_every=N")
        if self.patience and not self.eval_every:
            raise ConfigError(f"patience={self.patience} counts evaluations: give eval_every=N")
        if self.save_every and (not self.save or self.patience):
            raise ConfigError(f"save_every={self.save_every} needs save=PATH" if not self.save else
                              "save_every= and patience= both write save= (which then holds the best model); "
                              "use one")
        if self.warmup and self.steps and self.warmup >= self.steps:
            raise ConfigError(f"warmup={self.warmup} must be below steps={self.steps}")

    def settings(self):
        """The run's settings as a checkpoint stores them (under their keys: ``init``, not
        ``init_scheme``), and the device."""
        s = {o.key: getattr(self, o.name) for o in options.OPTIONS if o.saved}
        s.update(cell_options=self.cell_options or {}, device=self.device, bidirectional=bool(self.bidirectional),
                 dropout=float(self.dropout), lr_gamma=float(self.lr_gamma),
                 lr_step_size=self.lr_step_size or max(1, (self.steps - self.warmup) // 3))
        return s


TrainConfig = make_dataclass(
    "TrainConfig",
    [(o.name, options.PYTHON_TYPES[o.kind], field(default=o.default)) for o in options.OPTIONS] + [
        ("progress", object, field(default=False)),  # True (a line on stderr) or progress(step, steps, loss, norm, note)
        ("explicit", frozenset, field(default=frozenset())),  # the arguments chosen, not defaulted
        ("parallel", object, field(default=None)),  # distributed.mpi.DataParallel, or None
    ], bases=(_TrainConfigMethods,), namespace={"__module__": __name__})
TrainConfig.__doc__ = """One training run: a field per run option (``tinygrad_rnn.options.OPTIONS``, the
options of ``tinygrad-rnn train``), and ``progress``, ``explicit`` and ``parallel`` (see
``train``). ``train(**fields)`` is ``fit(TrainConfig(**fields)).summary``. ``check()``
validates it; ``settings()`` is the part a checkpoint stores (what ``build`` reads back)."""


@dataclass
class TrainResult:
    """What ``fit`` returns: ``summary`` (what ``train`` returns), the trained ``model`` and its ``task``."""

    summary: dict
    model: SequenceModel
    task: object


def train(*args, **kwargs):
    """Train ``cell`` on ``task``; return a summary dict (what ``train --json`` prints).

    Keyword arguments as in ``tinygrad-rnn train`` (the fields of ``TrainConfig``, one per
    row of ``tinygrad_rnn.options.OPTIONS``, with its type, range, default and help). ``steps``
    is the total: a resumed run continues from its checkpoint up to it. ``bptt=K`` (stream
    tasks: text, series) trains on consecutive K-step chunks, carrying each sequence's state
    across chunks (detached). ``fit(TrainConfig(...))`` returns the trained model too.

    ``lr_schedule``: ``constant``, ``step`` (times ``lr_gamma`` every ``lr_step_size``
    steps, default a third of the steps after the warmup), ``cosine`` (to 0 at ``steps``)
    or ``plateau`` (times ``lr_gamma`` when the eval loss has not improved for
    ``lr_patience`` evaluations), after ``warmup`` steps of linear ramp. ``eval_every=N``
    measures the eval loss every N steps (logged); ``patience=K`` stops when it has not
    improved for K evaluations, and keeps the best model (written to ``save`` when it
    improves, so the checkpoint there is the best one). ``save_every=N`` also writes the
    checkpoint every N steps.

    With ``resume``, a run setting passed explicitly (``hidden=32``) that differs from the
    checkpoint's is a ``ConfigError``; ``explicit`` names the arguments to treat as chosen
    (the CLI passes the options given on its command line; by default, those passed here).
    ``progress`` is True (a line on stderr) or a callable ``progress(step, steps, loss,
    grad_norm, note)`` (``note``: the latest eval loss, with ``eval_every``). Output paths are
    checked before any work (``tinygrad_rnn.safeio.check_outputs``).

    ``parallel``: data-parallel training (``tinygrad_rnn.distributed.mpi.DataParallel``):
    every process draws the same global batch, trains on its shard, and ``parallel``
    sums the weighted gradients and loss across processes before clipping and the update.
    """
    known = [f.name for f in fields(TrainConfig)]
    for key in kwargs:
        if key not in known:  # said as Python says it of a plain function, not of TrainConfig.__init__
            close = difflib.get_close_matches(key, known, n=1)
            raise TypeError(f"train() got an unexpected keyword argument {key!r}"
                            + (f". Did you mean {close[0]!r}?" if close else ""))
    if "explicit" not in kwargs:  # from Python, the arguments passed are the ones chosen
        kwargs["explicit"] = set(kwargs)
    return fit(TrainConfig(*args, **kwargs)).summary


def fit(config):
    """Run a ``TrainConfig``: build the model (or resume it), train, evaluate. Returns a
    ``TrainResult``. An exception out of a plugin task's own code becomes a one-line
    ``UserCodeError`` naming the task and the training step."""
    config.check()
    run = _Run(config)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are reported, not warned
        try:
            run.setup()
            run.loop()
            return run.finish()
        except Exception as e:
            if run.task is not None:
                _raise_from_task_code(e, type(run.task), f"at training step {run.step}")
            raise
        finally:
            run.locks.release()


def _raise_from_task_code(exc, task_cls, where):
    """If ``exc`` came out of a plugin task's own code, raise it as a one-line UserCodeError."""
    raise_if_user_code(exc, "task", task_cls, where)


class _Run:
    """One training run's state: the model, optimiser, schedule and generators (what a
    checkpoint saves), the truncated-BPTT position, and the counters of the summary."""

    def __init__(self, config):
        self.config = config
        self.task = None
        self.step = 0            # the step under way (0 before the first)
        self.locks = safeio.OutputLocks()

    # ---- before the first step ----------------------------------------------------------
    def setup(self):
        """Build the task, model, optimiser and schedule, fresh or from ``resume``."""
        cfg = self.config
        settings = cfg.settings()
        meta, arrays = checkpoint.load(cfg.resume) if cfg.resume else (None, None)
        if meta:
            settings = _resumed_settings(cfg, settings, meta, arrays)
        else:
            check_cell_options(cfg.cell, settings["cell_options"])
        if settings.get("dropout") and settings["layers"] == 1 and not meta:
            print("warning: --dropout acts between layers; with one layer it does nothing (as in PyTorch)",
                  file=sys.stderr)
        existing = {"save=": (checkpoint.is_checkpoint, checkpoint.NOUN),
                    "log=": (safeio.is_log, "a tinygrad_rnn JSON Lines log")}
        safeio.check_outputs([("log=", cfg.log)], [("resume=", cfg.resume)])  # save= may replace resume='s file
        safeio.check_outputs([("save=", cfg.save), ("log=", cfg.log)],
                             [("data=", settings.get("data")), *plugin_files()], existing)
        if cfg.parallel is None or cfg.parallel.root:  # one writer per output: a second run is refused
            self.locks = safeio.lock_outputs([("save=", cfg.save), ("log=", cfg.log)])
        self.task, self.model = build(dict(settings, weights=None) if meta else settings,  # resumed: its own
                                       cfg.remat_setting)
        if not meta and _chosen(cfg, options.BY_NAME["seq_len"]):
            check_seq_len(self.task, cfg.seq_len)
        settings["seq_len"] = self.task.seq_len  # classify: the data file's T
        if getattr(self.task, "vocab", None) is not None:
            settings["vocab"] = "".join(self.task.vocab)  # checkpoints carry the character mapping
        _check_bptt(settings, self.task)
        self.settings = settings
        self.opt = optim.OPTIMIZERS[settings["optimizer"]](self.model.parameters(), lr=settings["lr"],
                                                           weight_decay=settings["weight_decay"], l1=settings["l1"])
        self.schedule = {k: setting(settings, k) for k in SCHEDULE_KEYS}
        self.sched = _scheduler(self.opt, self.schedule, cfg.steps)
        self.early = {"best": math.inf, "best_step": None, "bad": 0}  # eval-loss bookkeeping (--patience)
        self.rng = np.random.default_rng(settings["seed"])
        safeio.check_space(cfg.save, 3 * sum(p.numpy().nbytes for p in self.model.parameters()) + 2 ** 16,
                           "save=")
        self.start, self.carried, self.cursors, self.best = 0, None, None, None
        if meta:
            self._resume(meta, arrays)
        if cfg.parallel is not None and self.carried is not None:
            self.carried = cfg.parallel.shard_state(self.carried)

    def _resume(self, meta, arrays):
        cfg = self.config
        self.start = checkpoint.restore(cfg.resume, meta, arrays, self.model, self.opt, self.rng, self.sched)
        self.cursors, self.carried = _stream_position(cfg.resume, arrays, self.model, self.task, self.settings)
        self.early = meta.get("early_stop", self.early)
        if self.schedule["patience"] and self.early["best_step"] is not None:
            self.best = meta, arrays  # with --patience, checkpoints are written at the best step
        if self.start > cfg.steps:
            raise ConfigError(f"the checkpoint is already at step {self.start}, beyond steps={cfg.steps}")

    # ---- the loop -----------------------------------------------------------------------
    def loop(self):
        """Steps ``start + 1`` .. ``steps``: each a batch, forward, backward, clip and update,
        then the bookkeeping (eval, log, checkpoints, progress). With ``save``, Ctrl-C
        finishes the step under way and saves it; a second one stops at once (not under
        MPI, where every rank must stop at the same step)."""
        cfg = self.config
        self.losses, self.window, self.clipped, self.skipped = [], [], 0, 0
        self.eval_note, self.stopped_at, self.completed, self.interrupted = "", None, self.start, []
        self.progress = _print_progress if cfg.progress is True else cfg.progress or None
        if cfg.log:
            self._trim_log()
        self.log_file = open(cfg.log, "a", encoding="utf-8") if cfg.log else None
        restore_sigint = _finish_step_on_sigint(self.interrupted) if cfg.save and cfg.parallel is None else None
        t0 = time.perf_counter()
        try:
            for step in range(self.start + 1, cfg.steps + 1):
                self.step = step
                x, y = self._batch()
                done = self._update(x, y)
                if done is None:  # a non-finite loss or gradient, skipped (--on-nonfinite skip)
                    continue
                self._after_update(x, y, *done)
                if self.stopped_at or self.interrupted:
                    break
        finally:
            if restore_sigint is not None:
                restore_sigint()
            if self.log_file:
                _close_log(self.log_file)
        self.seconds = time.perf_counter() - t0

    def _trim_log(self):
        """A resumed run replays the steps after its checkpoint: the log's records of them,
        written by the run that went on past it, are dropped so that no step is logged twice."""
        cfg = self.config
        dropped = safeio.trim_log(cfg.log, self.start if cfg.resume else None)
        if dropped:
            print(f"note: --log {cfg.log!r}: dropped {dropped} record(s) past step {self.start}, where "
                  "the run resumes (they are logged again as the steps are replayed)", file=sys.stderr)

    def _batch(self):
        """This step's (x, y): a fresh batch, or the next chunk of every sequence (``bptt``)."""
        s = self.settings
        if s["bptt"]:
            x, y, self.cursors = _tbptt_batch(self.task, self.rng, s["batch"], s["bptt"], self.cursors)
        else:
            x, y = self.task.batch(self.rng, s["batch"])
            self.carried = None
        if self.config.parallel is not None:
            x, y = self.config.parallel.shard(x, y, self.task)
        return x, y

    def _update(self, x, y):
        """Forward, backward, clip and step; (loss, gradient norm, norm after clipping), or
        None when the step was skipped."""
        cfg, s, params = self.config, self.settings, self.model.parameters()
        self.opt.zero_grad()
        pred, state = self.model(Tensor(x, device=cfg.device), self.carried, lengths=self.task.lengths(y))
        loss = self.task.loss(pred, y)
        loss_value = float(loss.item())
        if math.isfinite(loss_value):
            loss.backward()
        if cfg.parallel is not None:
            loss_value = cfg.parallel.allreduce(loss_value, params)
            if cfg.parallel.interrupted and not self.interrupted:  # Ctrl-C on some rank: all stop after this step
                self.interrupted.append(True)
        norm = optim.grad_norm(params)
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            if setting(self.settings, "on_nonfinite") == "skip":
                self.skipped += 1
                self.carried = None
                return None
            raise TrainingError(_nonfinite_message(self.step, loss_value, self.model))
        after = norm
        if s["clip_norm"] is not None:
            optim.clip_grad_norm(params, s["clip_norm"], norm=norm)
            after = min(norm, s["clip_norm"])
            self.clipped += norm > s["clip_norm"]
        if s["clip_value"] is not None:
            optim.clip_grad_value(params, s["clip_value"])
            after = optim.grad_norm(params)
        self.opt.step()
        if s["bptt"]:
            self.carried = tuple(t.detach() for t in state)
        return loss_value, norm, after

    def _after_update(self, x, y, loss_value, norm, after):
        """The schedule, the log, evaluation and early stopping, checkpoints, progress."""
        cfg, step, steps = self.config, self.step, self.config.steps
        every = self.schedule["eval_every"]
        evaluated = every and step % every == 0
        eval_loss = evaluate(self.model, self.task, cfg.device) if evaluated else None
        self.sched.step(eval_loss) if isinstance(self.sched, optim.ReduceLROnPlateau) else self.sched.step()
        self.losses.append(loss_value)
        self.window.append(loss_value)
        if self.log_file and (step % cfg.log_every == 0 or step == steps):
            _write(self.log_file, {"step": step, "loss": float(np.mean(self.window)), "grad_norm": norm,
                                   "grad_norm_clipped": after, "lr": self.opt.lr,
                                   "clip_events": int(self.clipped)})
        if step % cfg.log_every == 0 and step != steps:
            self.window = []
        if self.log_file and cfg.diagnose_every and step % cfg.diagnose_every == 0:
            _write(self.log_file, _diagnose_record(self.model, self.task, x, y, step, self.clipped, cfg.device))
        if evaluated:
            self._evaluated(eval_loss)
        if cfg.save_every and step % cfg.save_every == 0 and step != steps:
            self._save(self.snapshot(step))
        self.completed = step
        if self.progress:
            self.progress(step, steps, loss_value, norm, self.eval_note)

    def _evaluated(self, eval_loss):
        """Keep the best model (``patience``), log the eval loss, stop when it stalls."""
        cfg, step, early, patience = self.config, self.step, self.early, self.schedule["patience"]
        if eval_loss < early["best"]:
            self.early = early = {"best": eval_loss, "best_step": step, "bad": 0}
            if patience:
                self.best = self.snapshot(step)
                if cfg.save:  # now, so that an interrupted run keeps its best model too
                    self._save(self.best)
        else:
            self.early = early = dict(early, bad=early["bad"] + 1)
        if self.log_file:
            _write(self.log_file, {"step": step, "eval_loss": eval_loss, "best_eval_loss": early["best"],
                                   "lr": self.opt.lr})
        self.eval_note = f"  eval {eval_loss:.4f} (best {early['best']:.4f} at {early['best_step']})"
        if patience and early["bad"] >= patience:
            self.stopped_at = step

    def snapshot(self, step):
        """The run as it stands, as ``checkpoint.save`` takes it. Under MPI a collective
        (every rank, at the same step): the carried state is gathered from all shards."""
        carried = self.carried if self.config.parallel is None else self.config.parallel.gather_state(self.carried)
        return checkpoint.snapshot(step, self.settings, self.model, self.opt, self.sched, self.rng, self.early,
                                   carried, self.cursors)

    def _save(self, snapshot):
        """Write ``snapshot`` to ``save``: under MPI, rank 0 alone (the others hold the same)."""
        if self.config.parallel is None or self.config.parallel.root:
            checkpoint.save(self.config.save, *snapshot)

    # ---- after the last step ------------------------------------------------------------
    def finish(self):
        """Keep the best model (``patience``), save, evaluate: the ``TrainResult``."""
        cfg, s, early = self.config, self.settings, self.early
        done = len(self.losses)
        if self.best is not None:  # --patience keeps the best model, in memory and on disk
            self.model.load_state_dict(checkpoint.section(self.best[1], "param"))
        save = cfg.save
        if save:
            at = self.completed if self.interrupted else (cfg.steps if done or self.start == cfg.steps else self.start)
            self._save(self.best or self.snapshot(at))
        if self.interrupted:
            raise TrainingInterrupted(f"interrupted at step {self.completed} of {cfg.steps}; the run up to it is "
                                      f"saved in {save!r}: resume={save} to continue")
        eval_loss = evaluate(self.model, self.task, cfg.device)
        seconds = self.seconds
        summary = {
            "cell": s["cell"], "task": s["task"], "seq_len": s["seq_len"],
            "hidden": s["hidden"], "layers": s["layers"], "steps": cfg.steps, "start_step": self.start,
            "steps_run": self.step - self.start if self.step else 0,  # in this call: a resumed run starts late
            "train_loss": float(np.mean(self.window)) if self.window else None,
            "eval_loss": eval_loss, "baseline_loss": float(self.task.baseline()),
            "seconds": seconds, "steps_per_second": done / seconds if seconds > 0 and done else 0.0,
            "clip_fraction": self.clipped / done if done else 0.0, "skipped_steps": self.skipped,
            "lr": self.opt.lr,
            # the run's settings beyond the sizes, so that runs differing in them can be told apart
            "dtype": s.get("dtype", "float32"), "optimizer": s["optimizer"],
            "bidirectional": s.get("bidirectional", False), "dropout": s.get("dropout", 0.0),
            "embed": s.get("embed"), "lr_schedule": s.get("lr_schedule", "constant"),
            "cell_options": s.get("cell_options", {}),
        }
        if self.schedule["eval_every"]:
            summary.update(best_eval_loss=early["best"] if early["best_step"] is not None else None,
                           best_step=early["best_step"], stopped_early=self.stopped_at is not None,
                           stopped_at=self.stopped_at)
        if hasattr(self.task, "summary"):  # classify: train and eval accuracy
            summary.update(self.task.summary(self.model, cfg.device))
        if self.task.classification:
            summary["eval_bits_per_symbol"] = eval_loss / math.log(2)
        return TrainResult(summary, self.model, self.task)


def _validated_run(meta, arrays, path):
    """``checkpoint.validate_run`` and the fields it cannot check alone: the init scheme and
    the cell options (against the registered cell)."""
    config = checkpoint.validate_run(meta, arrays, path)
    if config.get("init", "pytorch") not in INIT_SCHEMES:
        raise checkpoint.CheckpointError(f"{path!r}: config field 'init' must be one of "
                                         f"{', '.join(INIT_SCHEMES)}, got {config['init']!r}")
    try:
        check_cell_options(config["cell"], config.get("cell_options") or {})
    except ConfigError as e:
        raise checkpoint.CheckpointError(f"{path!r}: config field 'cell_options' {config['cell_options']!r} "
                                         f"does not fit the cell: {e}") from None
    return config


def _resumed_settings(cfg, given, meta, arrays):
    """The checkpoint's settings, continued; an explicit option that says otherwise is an error."""
    resumed = _validated_run(meta, arrays, cfg.resume)
    _check_resume_conflicts(cfg, resumed, cfg.resume)
    settings = dict(resumed, device=cfg.device)
    for option in options.OPTIONS:  # what a resumed run may change, and this one chose
        if option.saved and option.resumable and _chosen(cfg, option):
            settings[option.key] = getattr(cfg, option.name)
    if "data" in cfg.explicit and cfg.data:
        settings["data"] = cfg.data  # the same file, or where the run's file has moved to
    return settings


def check_seq_len(task, seq_len):
    """A task whose sequences have their data's length (classify: the file's T) refuses any
    other ``seq_len``: it would not apply, and going on without it would hide that."""
    if task.seq_len != seq_len:
        raise ConfigError(f"seq_len={seq_len} does not apply to task {task.name!r}: its sequences are its data's, "
                          f"{task.seq_len} steps long; drop seq_len=")


def _check_bptt(settings, task):
    if settings["bptt"] and not task.stream:
        raise ConfigError(f"bptt={settings['bptt']} applies to stream tasks (text, series), not {task.name!r}")
    if settings["bptt"] and len(task.train) // settings["batch"] < settings["bptt"] + 2:
        raise ConfigError(f"bptt={settings['bptt']} is longer than each sequence's share of the training data "
                          f"({len(task.train)} steps over batch={settings['batch']}: "
                          f"{len(task.train) // settings['batch']} each); lower bptt= or batch=")


def _finish_step_on_sigint(flag):
    """Make SIGINT set ``flag`` instead of raising, until the returned function is called."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.append(True)
        print("\ninterrupted: finishing this step and saving it (Ctrl-C again to stop at once)", file=sys.stderr)
    signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, previous)


def _print_progress(step, steps, loss, norm, note=""):
    """The default ``progress=True`` display: one rewritten line on stderr."""
    print(f"\rstep {step}/{steps}  loss {loss:.4f}  |g| {norm:.3g}{note}", end="\n" if step == steps else "",
          file=sys.stderr)


def _stream_position(path, arrays, model, task, settings):
    """A truncated-BPTT checkpoint's (cursors, carried states), checked against this run;
    (None, None) for other checkpoints."""
    if "extra/cursors" not in arrays:
        return None, None
    cursors = arrays["extra/cursors"]
    shape = (settings["layers"], settings["batch"], settings["hidden"])
    states = [arrays.get(f"extra/state{i}") for i in range(model.rnn.num_states)]
    if (cursors.shape != (settings["batch"],) or cursors.dtype.kind not in "iu" or
            not getattr(task, "stream", False) or cursors.min() < 0 or
            cursors.max() + settings["bptt"] + 1 > len(task.train) or
            any(s is None or s.shape != shape or not np.isfinite(s).all() for s in states)):
        raise checkpoint.CheckpointError(f"{path!r}: its truncated-BPTT position does not fit this run "
                                         f"(cursors {cursors.shape}, states of shape {shape} expected)")
    return cursors, tuple(Tensor(s.astype(model.rnn.dtype), device=settings["device"]) for s in states)


def _nonfinite_message(step, loss_value, model):
    for name, p in model.named_parameters():
        if p.grad is not None and not np.isfinite(p.grad.numpy()).all():
            return (f"step {step}: non-finite gradient in parameter {name!r} (loss {loss_value}); "
                    "lower lr=, add clip_norm=, or pass on_nonfinite='skip'")
    return f"step {step}: the loss is {loss_value}; lower lr=, add clip_norm=, or pass on_nonfinite='skip'"


def _tbptt_batch(task, rng, batch, k, cursors):
    part = task.train
    if cursors is None:  # each sequence reads its own stretch of the training data
        cursors = (np.arange(batch) * (len(part) // batch) + rng.integers(0, len(part) // batch)) % (len(part) - k - 1)
    idx = cursors[None, :] + np.arange(k + 1)[:, None]
    x, y = task.pairs(part[idx])
    nxt = cursors + k
    nxt[nxt + k + 1 >= len(part)] = 0  # wrap around at the end of the data
    return x, y, nxt


def _diagnose_record(model, task, x, y, step, clipped, device):
    lengths = task.lengths(y)
    norms = diagnostics.step_grad_norms(model.rnn, model.rnn_input(Tensor(x, device=device)),
                                        lambda out: task.loss(model.readout(out, lengths), y), lengths=lengths)
    return {"step": step, "grad_norm_per_step": norms.tolist(),
            "param_grad_norms": diagnostics.param_grad_norms(model), "clip_events": int(clipped)}


def _write(f, record):
    try:
        f.write(safeio.dumps(record) + "\n")
        f.flush()
    except OSError as e:  # a full disk, say: the run's own error, not a bug
        raise safeio.OutputError(f"log={f.name!r}: cannot write ({e.strerror or e})") from None


def _close_log(f):
    try:
        f.close()
    except OSError as e:  # close() flushes what a failed write left in the buffer
        raise safeio.OutputError(f"log={f.name!r}: cannot write ({e.strerror or e})") from None


def _scheduler(opt, run, steps):
    kind, warmup = run["lr_schedule"], run["warmup"]
    if kind == "step":
        return optim.StepLR(opt, run["lr_step_size"], run["lr_gamma"], warmup=warmup)
    if kind == "cosine":
        return optim.CosineAnnealingLR(opt, max(1, steps - warmup), warmup=warmup)
    if kind == "plateau":
        return optim.ReduceLROnPlateau(opt, run["lr_gamma"], run["lr_patience"], warmup=warmup)
    return optim.ConstantLR(opt, warmup=warmup)


def _model_input(task, tokens, dtype):
    """Token indices for an embedding model, one-hot rows of the run's dtype otherwise."""
    x = task.inputs(tokens)
    return x if task.token_input else x.astype(dtype, copy=False)


def checkpointed_model(path, config, arrays):
    """(task, model) of a checkpoint's validated run ``config`` with its parameters loaded, on
    the CPU. A text model takes its character mapping from the checkpoint, not the data file."""
    config = dict(config, device="cpu")
    if config.get("task") == "text" and config.get("vocab"):  # no training file needed
        task = get_task("text").from_vocab(config["vocab"], config["seq_len"])
        model = build_model(config, task)
    else:  # and checkpoints from before vocabularies were stored: rebuilt from the file
        task, model = build(config)
    checkpoint.check_parameters(path, arrays)
    try:
        model.load_state_dict(checkpoint.section(arrays, "param"))
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise checkpoint.CheckpointError(f"{path!r} does not fit its own model: {msg}") from None
    return task, model


def generate(path, prime="", length=200, temperature=1.0, seed=0):
    """Sample ``length`` characters from a text checkpoint, after feeding ``prime``."""
    meta, arrays = checkpoint.load(path)
    config = _validated_run(meta, arrays, path)
    if config.get("task") != "text":
        raise ConfigError(f"{path!r} holds a model for task {config.get('task')!r}; generate needs a text model")
    if not isinstance(temperature, numbers.Real) or not temperature > 0 or math.isinf(temperature):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    options.check("seed", seed)
    if not isinstance(length, numbers.Integral) or isinstance(length, bool) or length < 0:
        raise ConfigError(f"length must be an integer >= 0, got {length!r}")
    if length > limits.MAX_GENERATE_LENGTH:
        raise ConfigError(f"length {length} is more than the {limits.MAX_GENERATE_LENGTH} characters generate "
                          "makes at once")
    task, model = checkpointed_model(path, config, arrays)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(config.get("dtype", "float32"))
    tokens = list(task.encode(prime)) if prime else [int(rng.integers(task.input_size))]
    state, out = None, []
    model.eval()
    with no_grad():
        logits, state = model(Tensor(_model_input(task, np.asarray(tokens), dtype)[:, None]), state)
        for _ in range(length):
            z = logits.numpy()[-1, 0].astype(np.float64)
            z = (z - z.max()) / temperature  # shifted first: a tiny temperature gives -inf, never NaN
            p = np.exp(z)
            token = int(rng.choice(len(p), p=p / p.sum()))
            out.append(token)
            logits, state = model(Tensor(_model_input(task, np.asarray([token]), dtype)[:, None]), state)
    return prime + task.decode(out)
