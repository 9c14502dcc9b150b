"""The training loop behind ``tinygrad-rnn train``, usable from Python as ``tr.train``."""
import json
import math
import sys
import time

import numpy as np

from . import checkpoint, diagnostics, init, optim
from .model import SequenceModel
from .plugins import get_cell, get_task
from .tape import no_grad
from .tensor import Tensor

INIT_SCHEMES = ("pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "orthogonal", "identity")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, say); the message says where."""


def _positive(name, v, allow_zero=False):
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")


def _nonneg(name, v):
    if v is not None and (not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def build(config):
    """Task and model from a config dict (what checkpoints store)."""
    task = get_task(config["task"])(seq_len=config["seq_len"], data=config.get("data"))
    get_cell(config["cell"])
    init.manual_seed(config["seed"])
    model = SequenceModel.for_task(config["cell"], task, config["hidden"], config["layers"],
                                   dtype=config.get("dtype", "float32"), **config.get("cell_options", {}))
    if config.get("init", "pytorch") != "pytorch":
        model.rnn.reset_parameters(config["init"])
    if config.get("device", "cpu") != "cpu":
        model.to(config["device"])
    return task, model


def evaluate(model, task, device="cpu"):
    x, y = task.eval_set()
    with no_grad():
        pred, _ = model(Tensor(x, device=device))
        return float(task.loss(pred, y).item())


def train(*args, **kwargs):
    """Train ``cell`` on ``task``; return a summary dict (what ``train --json`` prints).

    Keyword arguments as in ``tinygrad-rnn train``: cell, task, seq_len, data, hidden,
    layers, batch, steps, optimizer, lr, clip_norm, clip_value, init_scheme,
    weight_decay, l1, bptt, seed, device, save, resume, log, log_every, on_nonfinite,
    diagnose_every, dtype. ``steps`` is the total: a resumed run continues from its
    checkpoint up to it. ``bptt=K`` (stream tasks: text, series) trains on consecutive
    K-step chunks, carrying each sequence's state across chunks (detached).

    ``parallel``: data-parallel training (``tinygrad_rnn.distributed.mpi.DataParallel``):
    every process draws the same global batch, trains on its shard, and ``parallel``
    sums the weighted gradients and loss across processes before clipping and the update.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are reported, not warned
        return _train(*args, **kwargs)


def _train(cell="lstm", task="adding", seq_len=100, data=None, hidden=64, layers=1, batch=32, steps=1000,
          optimizer="adam", lr=1e-3, clip_norm=None, clip_value=None, init_scheme="pytorch",
          weight_decay=0.0, l1=0.0, bptt=None, seed=0, device="cpu", save=None, resume=None,
          log=None, log_every=50, on_nonfinite="error", progress=False, diagnose_every=None,
          dtype="float32", cell_options=None, return_model=False, parallel=None):
    for name, v in (("steps", steps), ("batch", batch), ("hidden", hidden), ("layers", layers),
                    ("seq_len", seq_len), ("log_every", log_every)):
        _positive(name, v, allow_zero=name == "steps")
    for name, v in (("lr", lr), ("clip_norm", clip_norm), ("clip_value", clip_value),
                    ("weight_decay", weight_decay), ("l1", l1)):
        _nonneg(name, v)
    if bptt is not None:
        _positive("bptt", bptt)
    if diagnose_every is not None:
        _positive("diagnose_every", diagnose_every)
    if optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {', '.join(optim.OPTIMIZERS)}")
    if init_scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init_scheme!r}; choose from {', '.join(INIT_SCHEMES)}")
    if on_nonfinite not in ("error", "skip"):
        raise ValueError(f"on_nonfinite must be 'error' or 'skip', got {on_nonfinite!r}")

    config = dict(cell=cell, task=task, seq_len=seq_len, data=data, hidden=hidden, layers=layers,
                  batch=batch, optimizer=optimizer, lr=lr, clip_norm=clip_norm, clip_value=clip_value,
                  init=init_scheme, weight_decay=weight_decay, l1=l1, bptt=bptt, seed=seed,
                  dtype=dtype, cell_options=cell_options or {}, device=device)
    meta, arrays = checkpoint.load(resume) if resume else (None, None)
    if meta:
        missing = [k for k in ("config", "step", "rng", "init_rng") if k not in meta]
        if missing or not isinstance(meta["config"], dict):
            raise checkpoint.CheckpointError(f"{resume!r} is incomplete: no {', '.join(missing) or 'config'}")
        config = dict(meta["config"], device=device)  # the checkpoint's run, continued
    try:
        task_obj, model = build(config)
    except KeyError as e:
        if meta:
            raise checkpoint.CheckpointError(f"{resume!r} has an unusable config: missing {e}") from None
        raise
    if bptt and not task_obj.stream:
        raise ValueError(f"--bptt applies to stream tasks (text, series), not {task_obj.name!r}")
    opt = optim.OPTIMIZERS[config["optimizer"]](model.parameters(), lr=config["lr"],
                                                weight_decay=config["weight_decay"], l1=config["l1"])
    rng = np.random.default_rng(config["seed"])
    start, carried, cursors = 0, None, None
    if meta:
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
        opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim/")})
        rng.bit_generator.state = meta["rng"]
        init._rng[0].bit_generator.state = meta["init_rng"]
        start = int(meta["step"])
        if "extra/cursors" in arrays:
            cursors = arrays["extra/cursors"]
            carried = tuple(Tensor(arrays[f"extra/state{i}"], device=device)
                            for i in range(model.rnn.num_states))
        if start > steps:
            raise ValueError(f"the checkpoint is already at step {start}, beyond --steps {steps}")
    if parallel is not None and carried is not None:
        carried = parallel.shard_state(carried)

    log_file = open(log, "a", encoding="utf-8") if log else None
    losses, clipped, skipped, window = [], 0, 0, []
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
            if progress:
                print(f"\rstep {step}/{steps}  loss {loss_value:.4f}  |g| {norm:.3g}", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
    finally:
        if log_file:
            log_file.close()
    seconds = time.perf_counter() - t0
    done = len(losses)
    if save and parallel is not None:
        carried = parallel.gather_state(carried)  # collective: every process takes part, the root saves
        save = save if parallel.root else None
    if save:
        _save(save, model, opt, steps if done or start == steps else start, config, rng, carried, cursors)
    eval_loss = evaluate(model, task_obj, device)
    summary = {
        "cell": config["cell"], "task": config["task"], "seq_len": config["seq_len"],
        "hidden": config["hidden"], "layers": config["layers"], "steps": steps, "start_step": start,
        "train_loss": float(np.mean(window)) if window else None,
        "eval_loss": eval_loss, "baseline_loss": float(task_obj.baseline()),
        "seconds": seconds, "steps_per_second": done / seconds if seconds > 0 and done else 0.0,
        "clip_fraction": clipped / done if done else 0.0, "skipped_steps": skipped,
    }
    if task_obj.classification:
        summary["eval_bits_per_symbol"] = eval_loss / math.log(2)
    return (summary, model, task_obj) if return_model else summary


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
        model.rnn, Tensor(x, device=device),
        lambda out: task.loss(model.head(out[-1] if model.last_step_only else out), y))
    return {"step": step, "grad_norm_per_step": norms.tolist(),
            "param_grad_norms": diagnostics.param_grad_norms(model), "clip_events": int(clipped)}


def _write(f, record):
    f.write(json.dumps(record) + "\n")
    f.flush()


def _save(path, model, opt, step, config, rng, carried, cursors):
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    if cursors is not None and carried is not None:
        arrays["extra/cursors"] = cursors
        arrays.update({f"extra/state{i}": s.numpy() for i, s in enumerate(carried)})
    meta = {"step": step, "config": {k: v for k, v in config.items() if k != "device"},
            "rng": rng.bit_generator.state, "init_rng": init._rng[0].bit_generator.state}
    checkpoint.save(path, meta, arrays)


def generate(path, prime="", length=200, temperature=1.0, seed=0):
    """Sample ``length`` characters from a text checkpoint, after feeding ``prime``."""
    meta, arrays = checkpoint.load(path)
    config = meta["config"]
    if config.get("task") != "text":
        raise ValueError(f"{path!r} holds a model for task {config.get('task')!r}; generate needs a text model")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    task, model = build(dict(config, device="cpu"))
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
    rng = np.random.default_rng(seed)
    eye = np.eye(task.input_size, dtype=np.dtype(config.get("dtype", "float32")))
    tokens = list(task.encode(prime)) if prime else [int(rng.integers(task.input_size))]
    state, out = None, []
    with no_grad():
        logits, state = model(Tensor(eye[tokens][:, None]), state)
        for _ in range(length):
            z = logits.numpy()[-1, 0].astype(np.float64) / temperature
            p = np.exp(z - z.max())
            token = int(rng.choice(len(p), p=p / p.sum()))
            out.append(token)
            logits, state = model(Tensor(eye[[token]][:, None]), state)
    return prime + task.decode(out)
