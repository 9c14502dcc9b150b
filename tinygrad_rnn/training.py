"""The training loop behind ``tinygrad-rnn train``, usable from Python as ``tr.train``."""
import math
import numbers
import os
import sys
import time

import numpy as np

from . import checkpoint, diagnostics, init, limits, optim, safeio
from .cell_options import check_cell_options
from .errors import ConfigError, Error
from .model import SequenceModel
from .plugins import get_cell, get_task, raise_if_user_code
from .tape import no_grad
from .tensor import Tensor

INIT_SCHEMES = ("pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "orthogonal", "identity")


class TrainingError(Error, RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, say); the message says where."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C: the run stopped after its last whole step (and saved it, with ``save``)."""


def _positive(name, v, allow_zero=False):
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")


def _nonneg(name, v, positive=False):
    if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool) or not v >= 0 or math.isinf(v)
                          or (positive and v == 0)):
        raise ConfigError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {v!r}")


# train() argument -> the run-config key it sets: what --resume refuses to change silently
RUN_ARGS = {"cell": "cell", "task": "task", "seq_len": "seq_len", "data": "data", "hidden": "hidden",
            "layers": "layers", "batch": "batch", "optimizer": "optimizer", "lr": "lr",
            "clip_norm": "clip_norm", "clip_value": "clip_value", "init_scheme": "init",
            "weight_decay": "weight_decay", "l1": "l1", "bptt": "bptt", "seed": "seed", "dtype": "dtype",
            "cell_options": "cell_options"}


def _check_resume_conflicts(config, given, explicit, path):
    """An explicit option that differs from the resumed run's setting is an error naming it."""
    for arg in explicit:
        key = RUN_ARGS.get(arg)
        if key is None or given.get(key) == config.get(key):
            continue
        mine, theirs = given.get(key), config.get(key)
        if key == "data" and mine and theirs and (safeio.same_file(mine, theirs) or not os.path.exists(theirs)):
            continue  # the same file, or the run's file has moved: its vocabulary still guards the mapping
        if key == "cell_options" and not mine and not theirs:
            continue
        option = "--" + arg.replace("init_scheme", "init").replace("_", "-")
        raise ConfigError(f"{option} {mine!r} conflicts with the resumed run's {key} {theirs!r} in {path!r}; "
                          f"drop {option} to continue that run, or start a new one without --resume")


def _check_model_size(config, task):
    """Refuse, before allocating, a model or batch that cannot fit in memory."""
    itemsize = np.dtype(config.get("dtype", "float32")).itemsize
    cls = get_cell(config["cell"])
    gates = {"rnn": 1, "gru": 3, "lstm": 4}.get(cls.name, 4)  # a plugin cell: assume LSTM-sized
    need = limits.model_bytes(task.input_size, config["hidden"], config["layers"], config["seq_len"],
                              config.get("batch", 1), task.output_size, gates, itemsize)
    limits.check_fits(need, f"--hidden {config['hidden']} --layers {config['layers']} "
                            f"--seq-len {config['seq_len']} --batch {config.get('batch', 1)}")


# Options added after the first checkpoints: their defaults are what older runs did.
MODEL_DEFAULTS = dict(bidirectional=False, dropout=0.0, embed=None, cell_options={})
SCHEDULE_DEFAULTS = dict(lr_schedule="constant", warmup=0, lr_step_size=None, lr_gamma=0.1, lr_patience=10,
                         eval_every=None, patience=None)


def build(config):
    """Task and model from a config dict (what checkpoints store)."""
    task_cls = get_task(config["task"])
    options = {"vocab": config["vocab"]} if config.get("vocab") else {}
    try:
        task = task_cls(seq_len=config["seq_len"], data=config.get("data"), **options)
    except Exception as e:
        _raise_from_task_code(e, task_cls, "while building the task")
        raise
    return task, build_model(config, task)


def build_model(config, task):
    """The model of a config dict for ``task`` (sizes checked before anything is allocated)."""
    cell_cls = get_cell(config["cell"])
    opts = {k: config.get(k, v) for k, v in MODEL_DEFAULTS.items()}
    if opts["embed"] and not task.tokens:
        raise ConfigError(f"--embed needs a task whose inputs are tokens (text), not {task.name!r}")
    if opts["bidirectional"] and task.forecast:
        raise ConfigError(f"--bidirectional cannot train on task {task.name!r}: its target at step t is "
                          "the input at t+1, which the reverse direction would read")
    task.token_input = bool(opts["embed"])
    _check_model_size(config, task)
    init.manual_seed(config["seed"])
    try:
        model = SequenceModel.for_task(config["cell"], task, config["hidden"], config["layers"],
                                       dtype=config.get("dtype", "float32"), bidirectional=opts["bidirectional"],
                                       dropout=opts["dropout"], embed=opts["embed"], **opts["cell_options"])
        if config.get("init", "pytorch") != "pytorch":
            model.rnn.reset_parameters(config["init"])
    except Exception as e:
        raise_if_user_code(e, "cell", cell_cls, "while building the model")
        raise
    if config.get("device", "cpu") != "cpu":
        model.to(config["device"])
    return model


def evaluate(model, task, device="cpu"):
    """Loss on the task's fixed eval set, in eval mode (no dropout)."""
    x, y = task.eval_set()
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            pred, _ = model(Tensor(x, device=device))
            return float(task.loss(pred, y).item())
    finally:
        model.train(was_training)


def train(*args, **kwargs):
    """Train ``cell`` on ``task``; return a summary dict (what ``train --json`` prints).

    Keyword arguments as in ``tinygrad-rnn train``: cell, task, seq_len, data, hidden,
    layers, batch, steps, optimizer, lr, clip_norm, clip_value, init_scheme,
    weight_decay, l1, bptt, seed, device, save, resume, log, log_every, on_nonfinite,
    diagnose_every, dtype, cell_options, bidirectional, dropout, embed, lr_schedule, warmup,
    lr_step_size, lr_gamma, lr_patience, eval_every, patience. ``steps`` is the total: a
    resumed run continues from its checkpoint up to it. ``bptt=K`` (stream tasks: text,
    series) trains on consecutive K-step chunks, carrying each sequence's state across
    chunks (detached).

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
    if "explicit" not in kwargs:  # from Python, the arguments passed are the ones chosen
        kwargs["explicit"] = set(kwargs)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are reported, not warned
        try:
            return _train(*args, **kwargs)
        except Exception as e:
            run = _frame_locals(e, _train)
            if run.get("task_obj") is not None:
                _raise_from_task_code(e, type(run["task_obj"]), f"at training step {run.get('step', 0)}")
            raise


def _frame_locals(exc, function):
    """The local variables of ``function``'s frame in ``exc``'s traceback ({} if absent)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is function.__code__:
            return tb.tb_frame.f_locals
        tb = tb.tb_next
    return {}


def _raise_from_task_code(exc, task_cls, where):
    """If ``exc`` came out of a plugin task's own code, raise it as a one-line UserCodeError."""
    raise_if_user_code(exc, "task", task_cls, where)


def _train(cell="lstm", task="adding", seq_len=100, data=None, hidden=64, layers=1, batch=32, steps=1000,
          optimizer="adam", lr=1e-3, clip_norm=None, clip_value=None, init_scheme="pytorch",
          weight_decay=0.0, l1=0.0, bptt=None, seed=0, device="cpu", save=None, resume=None,
          log=None, log_every=50, on_nonfinite="error", progress=False, diagnose_every=None,
          dtype="float32", cell_options=None, return_model=False, bidirectional=False, dropout=0.0,
          embed=None, lr_schedule="constant", warmup=0, lr_step_size=None, lr_gamma=0.1, lr_patience=10,
          eval_every=None, patience=None, save_every=None, explicit=(), parallel=None):
    for name, v in (("steps", steps), ("batch", batch), ("hidden", hidden), ("layers", layers),
                    ("seq_len", seq_len), ("log_every", log_every)):
        _positive(name, v, allow_zero=name == "steps")
    for name, v in (("lr", lr), ("clip_norm", clip_norm), ("clip_value", clip_value),
                    ("weight_decay", weight_decay), ("l1", l1)):
        _nonneg(name, v, positive=name == "lr")
    _positive("seed", seed, allow_zero=True)
    if bptt is not None:
        _positive("bptt", bptt)
    for name, v in (("diagnose_every", diagnose_every), ("embed", embed), ("lr_step_size", lr_step_size),
                    ("eval_every", eval_every), ("patience", patience), ("save_every", save_every)):
        if v is not None:
            _positive(name, v)
    _positive("warmup", warmup, allow_zero=True)
    _positive("lr_patience", lr_patience, allow_zero=True)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(lr_gamma, bool) or not isinstance(lr_gamma, (int, float)) or not 0 < lr_gamma <= 1:
        raise ConfigError(f"lr_gamma must be a number in (0, 1], got {lr_gamma!r}")
    if lr_schedule not in optim.SCHEDULES:
        raise ConfigError(f"unknown lr schedule {lr_schedule!r}; choose from {', '.join(optim.SCHEDULES)}")
    if lr_schedule == "plateau" and not eval_every:
        raise ConfigError("--lr-schedule plateau lowers the rate when the eval loss stalls: give --eval-every N")
    if patience and not eval_every:
        raise ConfigError("--patience counts evaluations: give --eval-every N")
    if save_every and (not save or patience):
        raise ConfigError("--save-every needs --save PATH" if not save else
                         "--save-every and --patience both write --save (which then holds the best model); use one")
    if warmup and steps and warmup >= steps:
        raise ConfigError(f"--warmup ({warmup}) must be below --steps ({steps})")
    if optimizer not in optim.OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose from {', '.join(optim.OPTIMIZERS)}")
    if init_scheme not in INIT_SCHEMES:
        raise ConfigError(f"unknown init {init_scheme!r}; choose from {', '.join(INIT_SCHEMES)}")
    if on_nonfinite not in ("error", "skip"):
        raise ConfigError(f"on_nonfinite must be 'error' or 'skip', got {on_nonfinite!r}")

    config = dict(cell=cell, task=task, seq_len=seq_len, data=data, hidden=hidden, layers=layers,
                  batch=batch, optimizer=optimizer, lr=lr, clip_norm=clip_norm, clip_value=clip_value,
                  init=init_scheme, weight_decay=weight_decay, l1=l1, bptt=bptt, seed=seed,
                  dtype=dtype, cell_options=cell_options or {}, device=device, bidirectional=bool(bidirectional),
                  dropout=float(dropout), embed=embed, lr_schedule=lr_schedule, warmup=warmup,
                  lr_step_size=lr_step_size or max(1, (steps - warmup) // 3), lr_gamma=float(lr_gamma),
                  lr_patience=lr_patience, eval_every=eval_every, patience=patience)
    meta, arrays = checkpoint.load(resume) if resume else (None, None)
    if meta:
        resumed = checkpoint.validate_run(meta, arrays, resume)
        _check_resume_conflicts(resumed, config, explicit, resume)
        _check_layer_option_conflicts(resume, resumed, config, lr_step_size)
        config = dict(resumed, device=device)  # the checkpoint's run, continued
        if "data" in explicit and data:
            config["data"] = data  # the same file, or where the run's file has moved to
    else:
        check_cell_options(cell, config["cell_options"])
    if config.get("dropout") and config["layers"] == 1 and not meta:
        print("warning: --dropout acts between layers; with one layer it does nothing (as in PyTorch)",
              file=sys.stderr)
    safeio.check_outputs([("--save", save), ("--log", log)], [("--data", config.get("data"))])
    safeio.check_outputs([("--log", log)], [("--resume", resume)])  # --save may replace --resume's file
    task_obj, model = build(config)
    if getattr(task_obj, "vocab", None) is not None:
        config["vocab"] = "".join(task_obj.vocab)  # checkpoints carry the character mapping
    if config["bptt"] and not task_obj.stream:
        raise ConfigError(f"--bptt applies to stream tasks (text, series), not {task_obj.name!r}")
    if config["bptt"] and len(task_obj.train) // config["batch"] < config["bptt"] + 2:
        raise ConfigError(f"--bptt {config['bptt']} is longer than each sequence's share of the training data "
                          f"({len(task_obj.train)} steps over --batch {config['batch']}: "
                          f"{len(task_obj.train) // config['batch']} each); lower --bptt or --batch")
    opt = optim.OPTIMIZERS[config["optimizer"]](model.parameters(), lr=config["lr"],
                                                weight_decay=config["weight_decay"], l1=config["l1"])
    run = {k: config.get(k, v) for k, v in SCHEDULE_DEFAULTS.items()}
    sched = _scheduler(opt, run, steps)
    early = {"best": math.inf, "best_step": None, "bad": 0}  # eval-loss bookkeeping (--patience)
    rng = np.random.default_rng(config["seed"])
    safeio.check_space(save, 3 * sum(p.numpy().nbytes for p in model.parameters()) + 2 ** 16, "--save")
    start, carried, cursors, best = 0, None, None, None
    if meta:
        start, cursors, carried = _restore(resume, meta, arrays, model, opt, rng, task_obj, config, device)
        if "scheduler" in meta:
            sched.load_state_dict(meta["scheduler"])
        early = meta.get("early_stop", early)
        if run["patience"] and early["best_step"] is not None:
            best = meta, arrays  # with --patience, checkpoints are written at the best step
        if start > steps:
            raise ConfigError(f"the checkpoint is already at step {start}, beyond --steps {steps}")
    if parallel is not None and carried is not None:
        carried = parallel.shard_state(carried)

    progress = _print_progress if progress is True else progress or None
    log_file = open(log, "a", encoding="utf-8") if log else None
    losses, clipped, skipped, window = [], 0, 0, []
    eval_note, stopped_at = "", None
    completed, interrupted = start, []
    # With --save, Ctrl-C finishes the step under way and saves it; a second one stops at once.
    # (Not under MPI, where every rank must stop at the same step.)
    restore_sigint = _finish_step_on_sigint(interrupted) if save and parallel is None else None
    t0 = time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            if config["bptt"]:
                x, y, cursors = _tbptt_batch(task_obj, rng, config["batch"], config["bptt"], cursors)
            else:
                x, y = task_obj.batch(rng, config["batch"])
                carried = None
            if parallel is not None:
                x, y = parallel.shard(x, y, task_obj)
            opt.zero_grad()
            pred, state = model(Tensor(x, device=device), carried)
            loss = task_obj.loss(pred, y)
            loss_value = float(loss.item())
            if math.isfinite(loss_value):
                loss.backward()
            if parallel is not None:
                loss_value = parallel.allreduce(loss_value, model.parameters())
            norm = optim.grad_norm(model.parameters())
            if not (math.isfinite(loss_value) and math.isfinite(norm)):
                if on_nonfinite == "skip":
                    skipped += 1
                    carried = None
                    continue
                raise TrainingError(_nonfinite_message(step, loss_value, model))
            after = norm
            if config["clip_norm"] is not None:
                optim.clip_grad_norm(model.parameters(), config["clip_norm"])
                after = min(norm, config["clip_norm"])
                clipped += norm > config["clip_norm"]
            if config["clip_value"] is not None:
                optim.clip_grad_value(model.parameters(), config["clip_value"])
                after = optim.grad_norm(model.parameters())
            opt.step()
            evaluated = run["eval_every"] and step % run["eval_every"] == 0
            eval_loss = evaluate(model, task_obj, device) if evaluated else None
            sched.step(eval_loss) if isinstance(sched, optim.ReduceLROnPlateau) else sched.step()
            if config["bptt"]:
                carried = tuple(s.detach() for s in state)
            losses.append(loss_value)
            window.append(loss_value)
            if log_file and (step % log_every == 0 or step == steps):
                _write(log_file, {"step": step, "loss": float(np.mean(window)), "grad_norm": norm,
                                  "grad_norm_clipped": after, "lr": opt.lr, "clip_events": int(clipped)})
            if step % log_every == 0 and step != steps:
                window = []
            if log_file and diagnose_every and step % diagnose_every == 0:
                _write(log_file, _diagnose_record(model, task_obj, x, y, step, clipped, device))
            if evaluated:
                if eval_loss < early["best"]:
                    early = {"best": eval_loss, "best_step": step, "bad": 0}
                    if run["patience"]:
                        best = _snapshot(model, opt, step, config, rng, carried, cursors, sched, early)
                        if save:  # now, so that an interrupted run keeps its best model too
                            checkpoint.save(save, *best)
                else:
                    early = dict(early, bad=early["bad"] + 1)
                if log_file:
                    _write(log_file, {"step": step, "eval_loss": eval_loss, "best_eval_loss": early["best"],
                                      "lr": opt.lr})
                eval_note = f"  eval {eval_loss:.4f} (best {early['best']:.4f} at {early['best_step']})"
                if run["patience"] and early["bad"] >= run["patience"]:
                    stopped_at = step
            if save_every and step % save_every == 0 and step != steps:
                checkpoint.save(save, *_snapshot(model, opt, step, config, rng, carried, cursors, sched, early))
            completed = step
            if progress:
                progress(step, steps, loss_value, norm, eval_note)
            if stopped_at or interrupted:
                break
    finally:
        if restore_sigint is not None:
            restore_sigint()
        if log_file:
            _close_log(log_file)
    seconds = time.perf_counter() - t0
    done = len(losses)
    if best is not None:  # --patience keeps the best model, in memory and on disk
        model.load_state_dict({k[6:]: v for k, v in best[1].items() if k.startswith("param/")})
    if save and parallel is not None:
        carried = parallel.gather_state(carried)  # collective: every process takes part, the root saves
        save = save if parallel.root else None
    if save:
        checkpoint.save(save, *(best or _snapshot(model, opt, completed if interrupted else
                                                  (steps if done or start == steps else start), config,
                                                  rng, carried, cursors, sched, early)))
    if interrupted:
        raise TrainingInterrupted(f"interrupted at step {completed} of {steps}; the run up to it is saved in "
                                  f"{save!r}: --resume {save} to continue")
    eval_loss = evaluate(model, task_obj, device)
    summary = {
        "cell": config["cell"], "task": config["task"], "seq_len": config["seq_len"],
        "hidden": config["hidden"], "layers": config["layers"], "steps": steps, "start_step": start,
        "train_loss": float(np.mean(window)) if window else None,
        "eval_loss": eval_loss, "baseline_loss": float(task_obj.baseline()),
        "seconds": seconds, "steps_per_second": done / seconds if seconds > 0 and done else 0.0,
        "clip_fraction": clipped / done if done else 0.0, "skipped_steps": skipped,
        "lr": opt.lr,
        # the run's settings beyond the sizes, so that runs differing in them can be told apart
        "dtype": config.get("dtype", "float32"), "optimizer": config["optimizer"],
        "bidirectional": config.get("bidirectional", False), "dropout": config.get("dropout", 0.0),
        "embed": config.get("embed"), "lr_schedule": config.get("lr_schedule", "constant"),
        "cell_options": config.get("cell_options", {}),
    }
    if run["eval_every"]:
        summary.update(best_eval_loss=early["best"] if early["best_step"] is not None else None,
                       best_step=early["best_step"], stopped_early=stopped_at is not None,
                       stopped_at=stopped_at)
    if task_obj.classification:
        summary["eval_bits_per_symbol"] = eval_loss / math.log(2)
    return (summary, model, task_obj) if return_model else summary


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


def _restore(path, meta, arrays, model, opt, rng, task, config, device):
    """Load a checkpoint's parameters, optimiser and RNG states into this run, checking
    every entry against the model; returns (start step, stream cursors, carried state)."""
    try:
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
        opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim/")})
        rng.bit_generator.state = meta["rng"]
        init._rng[0].bit_generator.state = meta["init_rng"]
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise checkpoint.CheckpointError(f"{path!r} does not fit this model: {msg}") from None
    cursors, carried = None, None
    if "extra/cursors" in arrays:
        cursors = arrays["extra/cursors"]
        shape = (config["layers"], config["batch"], config["hidden"])
        states = [arrays.get(f"extra/state{i}") for i in range(model.rnn.num_states)]
        if (cursors.shape != (config["batch"],) or cursors.dtype.kind not in "iu" or
                not getattr(task, "stream", False) or cursors.min() < 0 or
                cursors.max() + config["bptt"] + 1 > len(task.train) or
                any(s is None or s.shape != shape or not np.isfinite(s).all() for s in states)):
            raise checkpoint.CheckpointError(f"{path!r}: its truncated-BPTT position does not fit this run "
                                             f"(cursors {cursors.shape}, states of shape {shape} expected)")
        carried = tuple(Tensor(s.astype(model.rnn.dtype), device=device) for s in states)
    return int(meta["step"]), cursors, carried


def _nonfinite_message(step, loss_value, model):
    for name, p in model.named_parameters():
        if p.grad is not None and not np.isfinite(p.grad.numpy()).all():
            return (f"step {step}: non-finite gradient in parameter {name!r} (loss {loss_value}); "
                    "lower --lr, add --clip-norm, or pass --on-nonfinite skip")
    return f"step {step}: the loss is {loss_value}; lower --lr, add --clip-norm, or pass --on-nonfinite skip"


def _tbptt_batch(task, rng, batch, k, cursors):
    part = task.train
    if cursors is None:  # each sequence reads its own stretch of the training data
        cursors = (np.arange(batch) * (len(part) // batch) + rng.integers(0, len(part) // batch)) % (len(part) - k - 1)
    idx = cursors[None, :] + np.arange(k + 1)[:, None]
    x, y = task._make(part[idx])
    nxt = cursors + k
    nxt[nxt + k + 1 >= len(part)] = 0  # wrap around at the end of the data
    return x, y, nxt


def _diagnose_record(model, task, x, y, step, clipped, device):
    norms = diagnostics.step_grad_norms(
        model.rnn, model.rnn_input(Tensor(x, device=device)), lambda out: task.loss(model.readout(out), y))
    return {"step": step, "grad_norm_per_step": norms.tolist(),
            "param_grad_norms": diagnostics.param_grad_norms(model), "clip_events": int(clipped)}


def _write(f, record):
    try:
        f.write(safeio.dumps(record) + "\n")
        f.flush()
    except OSError as e:  # a full disk, say: the run's own error, not a bug
        raise safeio.OutputError(f"--log {f.name!r}: cannot write ({e.strerror or e})") from None


def _close_log(f):
    try:
        f.close()
    except OSError as e:  # close() flushes what a failed write left in the buffer
        raise safeio.OutputError(f"--log {f.name!r}: cannot write ({e.strerror or e})") from None


def _scheduler(opt, run, steps):
    kind, warmup = run["lr_schedule"], run["warmup"]
    if kind == "step":
        return optim.StepLR(opt, run["lr_step_size"], run["lr_gamma"], warmup=warmup)
    if kind == "cosine":
        return optim.CosineAnnealingLR(opt, max(1, steps - warmup), warmup=warmup)
    if kind == "plateau":
        return optim.ReduceLROnPlateau(opt, run["lr_gamma"], run["lr_patience"], warmup=warmup)
    return optim.ConstantLR(opt, warmup=warmup)


def _check_layer_option_conflicts(path, saved, requested, lr_step_size):
    """A resumed run continues the checkpoint's settings; an option given now that says
    otherwise is an error, not something silently ignored."""
    defaults = dict(MODEL_DEFAULTS, **SCHEDULE_DEFAULTS)
    for key, default in defaults.items():
        want = lr_step_size if key == "lr_step_size" else requested[key]
        have = saved.get(key, default)
        if want not in (default, have):
            option = "--" + key.replace("_", "-")
            raise ConfigError(f"{option} {want!r} conflicts with the resumed run's {key} {have!r} in {path!r}; "
                              f"drop {option} to continue that run, or start a new one without --resume")


def _snapshot(model, opt, step, config, rng, carried, cursors, sched, early):
    """The checkpoint of the run as it stands: (meta, arrays) for ``checkpoint.save``."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": np.array(v) for k, v in opt.state_dict().items()})
    if cursors is not None and carried is not None:
        arrays["extra/cursors"] = cursors
        arrays.update({f"extra/state{i}": s.numpy() for i, s in enumerate(carried)})
    meta = {"step": step, "config": {k: v for k, v in config.items() if k != "device"},
            "rng": rng.bit_generator.state, "init_rng": init._rng[0].bit_generator.state,
            "scheduler": sched.state_dict(), "early_stop": early}
    return meta, arrays


def _model_input(task, tokens, dtype):
    """Token indices for an embedding model, one-hot rows of the run's dtype otherwise."""
    x = task.inputs(tokens)
    return x if task.token_input else x.astype(dtype, copy=False)


def generate(path, prime="", length=200, temperature=1.0, seed=0):
    """Sample ``length`` characters from a text checkpoint, after feeding ``prime``."""
    meta, arrays = checkpoint.load(path)
    config = checkpoint.validate_run(meta, arrays, path)
    if config.get("task") != "text":
        raise ConfigError(f"{path!r} holds a model for task {config.get('task')!r}; generate needs a text model")
    if not isinstance(temperature, numbers.Real) or not temperature > 0 or math.isinf(temperature):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    _positive("seed", seed, allow_zero=True)
    _positive("length", length, allow_zero=True)
    config = dict(config, device="cpu")
    if config.get("vocab"):  # the model's own character mapping: no training file needed
        task = get_task("text").from_vocab(config["vocab"], config["seq_len"])
        model = build_model(config, task)
    else:  # checkpoints from before vocabularies were stored: rebuild it from the file
        task, model = build(config)
    try:
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise checkpoint.CheckpointError(f"{path!r} does not fit its own model: {msg}") from None
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
