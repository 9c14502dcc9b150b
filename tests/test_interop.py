"""safetensors both ways (issue 20, parts 3 and 5): ``export`` writes a checkpoint's model in
PyTorch's names, which a PyTorch module loads with ``strict=True`` and runs to the same
outputs; ``--weights`` reads a PyTorch state_dict into diagnose, train and sweep and says
exactly what does not fit; ``sweep --json`` prints one document."""
import json
import os
import re
import shlex
import struct

import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner

import cli
import tinygrad_rnn as tr
from tinygrad_rnn import checkpoint, diagnostics, interop
from tinygrad_rnn.model import SequenceModel
from tinygrad_rnn.tensor import Tensor
from tinygrad_rnn.training import train

pytestmark = pytest.mark.usefixtures("clean_plugins")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(task="adding", seq_len=5, hidden=4, batch=2)


def run(*args):
    return CliRunner().invoke(cli.main, list(args))


def one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---- export: PyTorch loads it strictly and computes the same --------------------------------
TORCH_LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


@pytest.mark.parametrize("cell,extra", [
    ("lstm", dict(layers=2, bidirectional=True)),
    ("gru", dict(layers=1)),
    ("rnn", dict(layers=2, cell_options={"nonlinearity": "relu"})),
])
def test_export_loads_strictly_into_pytorch_and_gives_the_same_outputs(tmp_path, cell, extra):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    ck, out = str(tmp_path / "run.ck"), str(tmp_path / "model.safetensors")
    train(cell=cell, **SMALL, steps=2, dtype="float64", save=ck, **extra)
    result = run("export", "--checkpoint", ck, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["modules"]["head"] == f"nn.Linear({4 * (2 if extra.get('bidirectional') else 1)}, 1)"

    class Model(torch.nn.Module):  # what the README shows
        def __init__(self):
            super().__init__()
            kw = {"nonlinearity": "relu"} if extra.get("cell_options") else {}
            self.rnn = getattr(torch.nn, TORCH_LAYERS[cell])(2, 4, num_layers=extra["layers"],
                                                             bidirectional=extra.get("bidirectional", False), **kw)
            self.head = torch.nn.Linear(self.rnn.hidden_size * (2 if self.rnn.bidirectional else 1), 1)

    module = Model().double()
    module.load_state_dict(load_file(out), strict=True)
    assert f"nn.{TORCH_LAYERS[cell]}(2, 4, num_layers={extra['layers']}" in summary["modules"]["rnn"]

    meta, arrays = checkpoint.load(ck)
    ours = SequenceModel.for_task(cell, tr.get_task("adding")(seq_len=5), 4, extra["layers"], dtype="float64",
                                  bidirectional=extra.get("bidirectional", False), **extra.get("cell_options", {}))
    ours.load_state_dict(checkpoint.section(arrays, "param"))
    x = np.random.default_rng(0).standard_normal((5, 3, 2))
    our_out, _ = ours.rnn(Tensor(x))
    with torch.no_grad():
        their_out, _ = module.rnn(torch.from_numpy(x))
        their_pred = module.head(their_out)
    np.testing.assert_allclose(their_out.numpy(), our_out.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(their_pred.numpy(), ours.head(our_out).numpy(), rtol=1e-10, atol=1e-12)


def test_an_embedding_exports_as_embed_and_runs_the_same_in_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on the mat. " * 20)
    ck, out = str(tmp_path / "char.ck"), str(tmp_path / "char.safetensors")
    train(cell="gru", task="text", data=str(data), seq_len=6, hidden=5, batch=2, steps=1, embed=3, save=ck)
    summary = interop.export(ck, out)
    vocab = len(set(data.read_text()))
    assert summary["modules"] == {"rnn": "nn.GRU(3, 5, num_layers=1)", "head": f"nn.Linear(5, {vocab})",
                                  "embed": f"nn.Embedding({vocab}, 3)"}
    module = torch.nn.Module()
    module.embed, module.rnn, module.head = torch.nn.Embedding(vocab, 3), torch.nn.GRU(3, 5), torch.nn.Linear(5, vocab)
    module.load_state_dict(load_file(out), strict=True)
    _, arrays = checkpoint.load(ck)
    task = tr.get_task("text").from_vocab(sorted(set(data.read_text())), 6)
    ours = SequenceModel.for_task("gru", task, 5, embed=3)
    ours.load_state_dict(checkpoint.section(arrays, "param"))
    tokens = np.array([[1, 2], [3, 0], [4, 4]])
    pred, _ = ours(Tensor(tokens))
    with torch.no_grad():
        theirs = module.head(module.rnn(module.embed(torch.from_numpy(tokens)))[0])
    np.testing.assert_allclose(theirs.numpy(), pred.numpy(), rtol=1e-5, atol=1e-6)


def test_a_plugin_cell_exports_under_its_own_names_with_a_note(tmp_path):
    plugin = os.path.join(ROOT, "plugins", "indrnn.py")
    ck, out = str(tmp_path / "ind.ck"), str(tmp_path / "ind.safetensors")
    assert run("--plugin", plugin, "train", "--cell", "indrnn", "--seq-len", "4", "--hidden", "3",
               "--batch", "2", "--steps", "1", "--save", ck).exit_code == 0
    result = run("--plugin", plugin, "export", "--checkpoint", ck, "--out", out)
    assert result.exit_code == 0, result.output
    assert "PyTorch has no such layer" in result.stderr and "(no PyTorch layer)" in result.stdout
    assert sorted(safetensors.numpy.load_file(out)) == ["head.bias", "head.weight", "rnn.bias_l0", "rnn.u_l0",
                                                        "rnn.weight_l0"]


def test_export_refuses_to_replace_a_file_that_is_not_safetensors_and_a_non_checkpoint(tmp_path):
    ck = str(tmp_path / "run.ck")
    train(cell="rnn", **SMALL, steps=1, save=ck)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    line = one_line_error(run("export", "--checkpoint", ck, "--out", str(notes)))
    assert "already exists and is not a safetensors file" in line and notes.read_text() == "mine"
    line = one_line_error(run("export", "--checkpoint", str(notes), "--out", str(tmp_path / "x.safetensors")))
    assert "notes.txt" in line
    assert not (tmp_path / "x.safetensors").exists()


# ---- --weights: a PyTorch-saved file --------------------------------------------------------
def _torch_lstm_file(path, torch, **kw):
    from safetensors.torch import save_file
    torch.manual_seed(7)
    layer = torch.nn.LSTM(2, 4, **kw)
    save_file(layer.state_dict(), str(path))
    return {k: v.detach().numpy() for k, v in layer.state_dict().items()}


def test_diagnose_weights_from_pytorch_gives_the_norms_of_the_same_weights_loaded_in_python(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "lstm.safetensors"
    state = _torch_lstm_file(path, torch, num_layers=2, bidirectional=True)
    result = run("diagnose", "--cell", "lstm", "--seq-len", "6", "--hidden", "4", "--layers", "2", "--batch", "3",
                 "--bidirectional", "--weights", str(path), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["cells"][0]
    # the same weights through the Python API: the model, its state_dict, the report's batch
    task = tr.get_task("adding")(seq_len=6)
    tr.manual_seed(0)
    model = SequenceModel.for_task("lstm", task, 4, 2, dtype="float64", bidirectional=True)
    model.rnn.load_state_dict(state)
    x, y = task.batch(np.random.default_rng(0 + 1), 3)
    expected = diagnostics.diagnose_cell(model, task, Tensor(x), y)
    np.testing.assert_allclose(got["grad_norm_per_step"], expected["grad_norm_per_step"], rtol=1e-12)
    np.testing.assert_allclose(got["grad_norm_per_step_reverse"], expected["grad_norm_per_step_reverse"],
                               rtol=1e-12)
    # and they are not the norms of the model's own initialisation
    plain = json.loads(run("diagnose", "--cell", "lstm", "--seq-len", "6", "--hidden", "4", "--layers", "2",
                           "--batch", "3", "--bidirectional", "--json").stdout)["cells"][0]
    assert not np.allclose(plain["grad_norm_per_step"], got["grad_norm_per_step"])


def test_train_starts_from_the_weights_and_records_where_they_came_from(tmp_path):
    torch = pytest.importorskip("torch")
    path, ck = tmp_path / "lstm.safetensors", str(tmp_path / "run.ck")
    state = _torch_lstm_file(path, torch)
    train(cell="lstm", **SMALL, steps=0, weights=str(path), save=ck)
    meta, arrays = checkpoint.load(ck)
    assert meta["config"]["weights"] == str(path)
    for name, value in state.items():
        np.testing.assert_array_equal(arrays[f"param/rnn.{name}"], value)
    os.unlink(path)  # a resumed run continues from its checkpoint, not from the file
    assert train(cell="lstm", **SMALL, steps=1, resume=ck)["start_step"] == 0


# ---- --weights: what does not fit, in one line ----------------------------------------------
def _lstm_state(layers=1, reverse=False, hidden=4, inputs=2, gates=4):
    state = {}
    for l in range(layers):
        for suffix in ("", "_reverse") if reverse else ("",):
            i = inputs if l == 0 else hidden * (2 if reverse else 1)
            state[f"weight_ih_l{l}{suffix}"] = np.zeros((gates * hidden, i), np.float32)
            state[f"weight_hh_l{l}{suffix}"] = np.zeros((gates * hidden, hidden), np.float32)
            state[f"bias_ih_l{l}{suffix}"] = np.zeros(gates * hidden, np.float32)
            state[f"bias_hh_l{l}{suffix}"] = np.zeros(gates * hidden, np.float32)
    return state


def _edit(state, **changes):
    state = dict(state)
    for k, v in changes.items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    return state


@pytest.mark.parametrize("state,args,match", [
    (_lstm_state(gates=3), (), r"gate-count mismatch: 'weight_hh_l0' stacks 3 gate\(s\) of hidden size 4 "
                                r"\(as nn.GRU\): use --cell gru; --cell lstm has 4"),
    (_lstm_state(hidden=8), (), r"the weights are for hidden size 8 .*the model has --hidden 4: use --hidden 8"),
    (_lstm_state(layers=2), (), r"holds 2 layer\(s\) .*the model has --layers 1: use --layers 2"),
    (_lstm_state(), ("--layers", "2"), r"holds 1 layer\(s\) .*the model has --layers 2: use --layers 1"),
    (_lstm_state(reverse=True), (), r"bidirectional layer .*add --bidirectional"),
    (_lstm_state(), ("--bidirectional",), r"no \*_reverse tensors, but the model is --bidirectional"),
    (_edit(_lstm_state(), weight_ih_l0=np.zeros((2, 16), np.float32)),
     (), r"'weight_ih_l0' has shape \(2, 16\), the model expects \(16, 2\): transposed\?"),
    (_edit(_lstm_state(), weight_ih_l0=np.zeros((16, 3), np.float32)),
     (), r"read 3 input feature\(s\) per step, the model's input has 2 \(task 'adding'\)"),
    (_edit(_lstm_state(), bias_ih_l0=None, bias_hh_l0=None), (), r"missing tensor\(s\) 'bias_ih_l0', 'bias_hh_l0' "
                                                                 r"\(a layer built with bias=False"),
    (_edit(_lstm_state(), weight_hr_l0=np.zeros((4, 4), np.float32)), (), r"unexpected tensor\(s\) 'weight_hr_l0'"),
    (_edit(_lstm_state(), weight_hh_l0=np.zeros((16, 4), np.int64)), (), r"'weight_hh_l0' holds int64 values, not floats"),
    (_edit(_lstm_state(), weight_hh_l0=np.full((16, 4), np.nan, np.float32)), (), "contains NaN or Inf"),
    ({"lstm.weight_ih_l0": np.zeros((16, 2), np.float32), "fc.weight": np.zeros((1, 4), np.float32)}, (),
     r"tensor\(s\) 'fc.weight', 'lstm.weight_ih_l0' belong to module\(s\) 'fc', 'lstm', which the model "
     r"does not have.*bare nn.LSTM/GRU/RNN state_dict"),
    ({"rnn.weight_ih_l0": np.zeros((16, 2), np.float32)}, (), r"unexpected|missing tensor\(s\) 'rnn.weight_hh_l0'"),
])
def test_weights_that_do_not_fit_say_exactly_what_in_one_line(tmp_path, state, args, match):
    path = str(tmp_path / "w.safetensors")
    safetensors.numpy.save_file(state, path)
    line = one_line_error(run("diagnose", "--cell", "lstm", "--seq-len", "4", "--hidden", "4", "--batch", "2",
                              "--weights", path, *args))
    assert re.search(match, line), line
    assert line.startswith(f"Error: --weights {path!r}"), line


def test_hostile_or_wrong_weight_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    assert "claims a 1000000000000-byte header" in one_line_error(
        run("train", "--steps", "1", "--weights", str(bad)))
    assert "no such file" in one_line_error(run("train", "--steps", "1", "--weights", str(tmp_path / "none")))
    ck = str(tmp_path / "run.ck")
    train(cell="rnn", **SMALL, steps=1, save=ck)
    assert "is a tinygrad_rnn checkpoint: continue it with --resume" in one_line_error(
        run("train", "--cell", "rnn", "--steps", "1", "--weights", ck))
    assert "--weights needs --cell" in run("diagnose", "--weights", ck).output


# ---- sweep --json --------------------------------------------------------------------------
def test_sweep_json_is_one_document_on_stdout(tmp_path):
    from tinygrad_rnn.distributed import sweep
    out = tmp_path / "r.jsonl"
    point = sweep.grid("train", cell=["rnn"], seq_len=[4], hidden=[3], steps=1, batch=2)[0]
    result, _ = sweep.run_point(point)  # in this process: the results file then holds every point
    out.write_text(json.dumps({"point": point, "result": result}) + "\n")
    got = run("sweep", "--cell", "rnn", "--seq-len", "4", "--hidden", "3", "--steps", "1", "--batch", "2",
              "--out", str(out), "--json")
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["points"] == [{"point": point, "result": result}] and doc["out"] == str(out)
    assert doc["summary"][0]["cell"] == "rnn" and doc["stats"]["skipped"] == 1
    assert "already done" in got.stderr
    human = run("sweep", "--cell", "rnn", "--seq-len", "4", "--hidden", "3", "--steps", "1", "--batch", "2",
                "--out", str(out))
    assert "eval loss" in human.stdout and not human.stdout.lstrip().startswith("{")


# ---- the README's "Diagnose a PyTorch model", end to end ------------------------------------
@pytest.mark.slow
def test_the_readme_section_runs_end_to_end(tmp_path, monkeypatch):
    """The section's py blocks (not ```python: tests/test_readme.py would run them in the
    repository's folder) and commands, in order, in a fresh folder."""
    torch = pytest.importorskip("torch")
    # one thread: on a shared 2-core machine at load 10 the README's 100 PyTorch steps took
    # 145 s with torch's default thread count and 4.9 s with one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Diagnose a PyTorch model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(python|py|bash)\n(.*?)```", section, re.S)
    assert [kind for kind, _ in blocks] == ["py", "bash", "bash", "py"]
    monkeypatch.chdir(tmp_path)
    try:
        _run_blocks(blocks)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "lstm.safetensors").exists() and (tmp_path / "exported.safetensors").exists()


def _run_blocks(blocks):
    for kind, code in blocks:
        if kind == "bash":
            for part in code.replace("\\\n", " ").split("&&"):
                words = shlex.split(part)
                assert words[0] == "tinygrad-rnn"
                result = run(*words[1:])
                assert result.exit_code == 0, (words, result.output)
                if words[1] == "diagnose":
                    assert "lstm" in result.stdout and "verdict" in result.stdout
                if words[1] == "export":
                    assert "self.rnn = nn.LSTM(2, 32, num_layers=1)" in result.stdout
        else:
            exec(compile(code, f"README {kind} block", "exec"), {"__name__": "readme"})


def test_sweep_points_carry_the_weights_and_run_from_them(tmp_path, monkeypatch):
    from tinygrad_rnn.distributed import sweep
    path = tmp_path / "w.safetensors"
    tr.manual_seed(3)
    donor = tr.nn.RNN("gru", 2, 3)
    safetensors.numpy.save_file(donor.state_dict(), str(path))
    point = sweep.grid("diagnose", cell=["gru"], seq_len=[4], hidden=[3], batch=2, weights=str(path))[0]
    assert point["weights"] == str(path)
    result, _ = sweep.run_point(point)
    expected = tr.report.diagnose(("gru",), "adding", 4, "pytorch", 0, 3, batch=2, seed=0, clip_norm=1.0,
                                  weights=str(path))["cells"][0]
    assert result["grad_norm_per_step"] == np.asarray(expected["grad_norm_per_step"]).tolist()
    plain, _ = sweep.run_point(dict(point, weights=None))
    assert plain["grad_norm_per_step"] != result["grad_norm_per_step"]
    # the command line makes the path absolute (the workers may run elsewhere): the point is found done
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"point": point, "result": result}) + "\n")
    monkeypatch.chdir(tmp_path)
    got = run("sweep", "--mode", "diagnose", "--cell", "gru", "--seq-len", "4", "--hidden", "3", "--batch", "2",
              "--weights", "w.safetensors", "--out", str(out), "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["stats"]["skipped"] == 1
