"""--task classify: user .npz files of labelled sequences, every bad file refused in one
line naming the array, the last-valid-step readout, the stratified split, the accuracies."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import tinygrad_rnn as tr
from tinygrad_rnn import limits, plugins
from tinygrad_rnn.classify import Classify, load_classification, stratified_split
from tinygrad_rnn.errors import ConfigError, ResourceError
from tinygrad_rnn.model import SequenceModel
from tinygrad_rnn.tasks import TaskError
from tinygrad_rnn.tensor import Tensor

N, T, F = 40, 6, 2


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset()
    yield
    plugins.reset()


def make(tmp_path, name="data.npz", **arrays):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def good_arrays(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, F)).astype(np.float32)
    lengths = rng.integers(2, T + 1, n)
    y = np.arange(n) % 3
    for i in range(n):  # the class is written in the first feature of the last valid step
        x[i, lengths[i] - 1, 0] = 2.0 * y[i] - 2.0
        x[i, lengths[i]:] = 0.0
    return dict(x=x, y=y, lengths=lengths)


def test_loads_a_good_file(tmp_path):
    a = good_arrays()
    x, y, lengths = load_classification(make(tmp_path, **a))
    assert x.dtype == np.float32 and x.shape == (N, T, F)
    np.testing.assert_array_equal(y, a["y"])
    np.testing.assert_array_equal(lengths, a["lengths"])
    a.pop("lengths")
    assert (load_classification(make(tmp_path, "nolen.npz", **a))[2] == T).all()


class Unpickled:
    """Unpickling one of these records it: the loader must never get that far."""
    seen = []

    def __reduce__(self):
        return (Unpickled.seen.append, ("unpickled",))


BAD = [
    ("missing x", lambda a: {"y": a["y"]}, "has no array 'x'"),
    ("missing y", lambda a: {"x": a["x"]}, "has no array 'y'"),
    ("x rank", lambda a: dict(a, x=a["x"][:, :, 0]), "array 'x' must have shape (N, T, F), got shape (40, 6)"),
    ("y rank", lambda a: dict(a, y=a["y"][:, None]), "array 'y' must have shape (N,), got shape (40, 1)"),
    ("lengths rank", lambda a: dict(a, lengths=a["lengths"][:, None]), "array 'lengths' must have shape (N,)"),
    ("N differ", lambda a: dict(a, y=a["y"][:-1]), "array 'y' has 39 entries but 'x' has 40 sequences"),
    ("lengths N", lambda a: dict(a, lengths=a["lengths"][:5]), "array 'lengths' has 5 entries but 'x' has 40"),
    ("non-integer label", lambda a: dict(a, y=np.where(np.arange(N) == 7, 0.5, a["y"])),
     "array 'y' has a non-integer label (0.5) at index 7"),
    ("negative label", lambda a: dict(a, y=np.where(np.arange(N) == 3, -1, a["y"])),
     "array 'y' has a negative label (-1) at index 3"),
    ("label too large", lambda a: dict(a, y=np.where(np.arange(N) == 5, 10 ** 6, a["y"])),
     "array 'y' has label 1000000 at index 5, too large"),
    ("single class", lambda a: dict(a, y=np.zeros(N, np.int64)), "array 'y' holds one class only (0)"),
    ("nan input", lambda a: dict(a, x=np.where(np.arange(N)[:, None, None] == 4, np.nan, a["x"])),
     "array 'x' has a non-finite value (nan) at sequence 4, step 0, feature 0 (12 in all)"),
    ("inf input", lambda a: dict(a, x=_set(a["x"], (9, 2, 1), np.inf)),
     "array 'x' has a non-finite value (inf) at sequence 9, step 2, feature 1"),
    ("length zero", lambda a: dict(a, lengths=_set(a["lengths"], 11, 0)),
     "array 'lengths' has 0 at index 11: lengths must lie in [1, 6]"),
    ("length past T", lambda a: dict(a, lengths=_set(a["lengths"], 2, T + 1)),
     "array 'lengths' has 7 at index 2: lengths must lie in [1, 6]"),
    ("object y", lambda a: dict(a, y=np.array([Unpickled()] * N, dtype=object)),
     "array 'y' holds Python objects (object), which are never unpickled"),
    ("text x", lambda a: dict(a, x=np.full((N, T, F), "a")), "array 'x' holds <U1, not numbers"),
    ("empty x", lambda a: dict(a, x=np.zeros((N, 0, F))), "array 'x' is empty"),
]


def _set(array, index, value):
    array = array.astype(np.float64 if isinstance(value, float) else array.dtype)
    array[index] = value
    return array


@pytest.mark.parametrize("case, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_files_name_the_array(tmp_path, case, change, message):
    path = make(tmp_path, **change(good_arrays()))
    with pytest.raises(TaskError) as e:
        load_classification(path)
    text = str(e.value)
    assert message in text and path in text and "\n" not in text
    assert Unpickled.seen == []


def test_no_data_file_is_asked_for_by_the_argument_that_gives_one():
    with pytest.raises(TaskError, match=r"needs a data file: data=FILE.npz holding"):
        tr.train(task="classify", steps=1)
    r = CliRunner().invoke(cli.main, ["train", "--task", "classify", "--steps", "1"])
    assert r.exit_code == 1 and "needs a data file: --data FILE.npz holding" in r.output, r.output


def test_not_an_npz_and_no_file(tmp_path):
    path = tmp_path / "data.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(TaskError, match="is not an .npz file"):
        load_classification(str(path))
    with pytest.raises(TaskError, match="no such file"):
        load_classification(str(tmp_path / "missing.npz"))


def test_too_large_is_refused_from_the_headers(tmp_path, monkeypatch):
    path = make(tmp_path, **good_arrays())
    monkeypatch.setattr(limits, "available_memory", lambda: 1000)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded before the size check"))
    with pytest.raises(ResourceError, match="needs about .* of memory, more than the 1000 B available"):
        load_classification(path)


def test_a_header_claiming_more_than_the_file_holds(tmp_path):
    path = str(tmp_path / "data.npz")
    np.savez(path, **good_arrays())
    import zipfile
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["x.npy"] = members["x.npy"].replace(b"(40, 6, 2)", b"(40000000, 6, 2)")
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ResourceError, match="corrupt or truncated"):
        load_classification(path)


def test_stratified_split_is_fixed_and_keeps_proportions():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    train, held = stratified_split(y, 0.1)
    assert sorted(np.bincount(y[held]).tolist()) == [2, 3, 5]
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == len(y)
    again = stratified_split(y, 0.1)
    np.testing.assert_array_equal(held, again[1])
    assert len(stratified_split(y, 0.5)[1]) == 50
    one = stratified_split(np.array([0, 0, 0, 1]), 0.5)  # a class of one stays in training
    assert 3 in one[0]


@pytest.mark.parametrize("cell, bidirectional", [("gru", False), ("lstm", True), ("rnn", True)])
def test_readout_reads_the_last_valid_step(cell, bidirectional):
    """A padded sequence's logits equal those of the same sequence alone, unpadded, and the
    padding gets no gradient: the padding holds values that would change the answer."""
    rng = np.random.default_rng(1)
    tr.manual_seed(0)
    model = SequenceModel(cell, F, 3, hidden_size=5, last_step_only=True, dtype="float64",
                          bidirectional=bidirectional)
    lengths = np.array([T, 3, 1, 4])
    x = rng.normal(size=(T, 4, F))
    for b, n in enumerate(lengths):
        x[n:, b] = 7.0
    xt = Tensor(x, requires_grad=True)
    pred, _ = model(xt, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, _ = model(Tensor(x[:n, b:b + 1]))
        np.testing.assert_allclose(pred.numpy()[b], alone.numpy()[0], rtol=1e-10, atol=1e-12)
    pred.sum().backward()
    g = xt.grad.numpy()
    for b, n in enumerate(lengths):
        assert (g[n:, b] == 0).all() and np.abs(g[:n, b]).sum() > 0


def test_task_batches_loss_and_baseline(tmp_path):
    a = good_arrays()
    task = Classify(data=make(tmp_path, **a))
    assert (task.seq_len, task.input_size, task.output_size) == (T, F, 3)
    x, target = task.batch(np.random.default_rng(0), 8)
    assert x.shape == (T, 8, F) and target.shape == (8, 2)
    assert set(task.train_index[np.isin(task.train_index, task.eval_index)]) == set()
    y_eval = a["y"][task.eval_index]
    prior = np.bincount(a["y"][task.train_index]) / len(task.train_index)
    assert task.baseline() == pytest.approx(-np.log(prior[y_eval]).mean())
    assert task.baseline_accuracy() == pytest.approx((y_eval == np.argmax(prior)).mean())
    with pytest.raises(TaskError, match="eval_fraction must be a number in"):
        Classify(data=make(tmp_path, **a), eval_fraction=1.0)
    with pytest.raises(TaskError, match="holds out none"):
        Classify(data=make(tmp_path, "small.npz", **good_arrays(n=6)), eval_fraction=0.05)


def test_train_learns_and_reports_accuracies(tmp_path):
    path = make(tmp_path, **good_arrays(n=90))
    s = tr.train(cell="gru", task="classify", data=path, hidden=8, steps=60, batch=16, lr=0.03, seed=0)
    assert s["seq_len"] == T and s["num_classes"] == 3 and s["eval_sequences"] == 9
    assert s["baseline_accuracy"] == pytest.approx(1 / 3)
    assert s["eval_loss"] < s["baseline_loss"]
    assert s["train_accuracy"] > 0.8 and s["eval_accuracy"] > 0.6


def test_cli_train_json_diagnose_and_errors(tmp_path):
    path = make(tmp_path, **good_arrays())
    runner = CliRunner()
    r = runner.invoke(cli.main, ["train", "--task", "classify", "--data", path, "--cell", "rnn", "--hidden", "4",
                                 "--steps", "2", "--batch", "4", "--eval-fraction", "0.25", "--json",
                                 "--save", str(tmp_path / "run.ckpt")])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert {"eval_accuracy", "train_accuracy", "baseline_accuracy"} <= set(s) and s["eval_sequences"] == 10
    r = runner.invoke(cli.main, ["train", "--resume", str(tmp_path / "run.ckpt"), "--steps", "3",
                                 "--eval-fraction", "0.5"])
    assert r.exit_code == 1 and "--eval-fraction 0.5 conflicts" in r.output, r.output
    r = runner.invoke(cli.main, ["train", "--resume", str(tmp_path / "run.ckpt"), "--steps", "3", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["eval_sequences"] == 10, r.output
    r = runner.invoke(cli.main, ["train", "--task", "classify", "--data", path, "--hidden", "4", "--steps", "1"])
    assert r.exit_code == 0 and "eval accuracy" in r.stdout, r.output
    r = runner.invoke(cli.main, ["diagnose", "--task", "classify", "--data", path, "--cell", "gru", "--hidden", "4",
                                 "--batch", "4", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["seq_len"] == T and len(report["cells"][0]["grad_norm_per_step"][0]) == T
    bad = make(tmp_path, "bad.npz", **dict(good_arrays(), y=np.zeros(N, np.int64)))
    r = runner.invoke(cli.main, ["train", "--task", "classify", "--data", bad, "--steps", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == [f"Error: task 'classify': {bad!r}: array 'y' holds one class only (0): "
                                             "classification needs at least two"]


def test_a_seq_len_other_than_the_files_is_refused_not_ignored(tmp_path):
    """The file's T is the sequence length: --seq-len 50 would not apply, so it is an error
    (as --bptt is on a task that is not a stream), not a run that quietly used T."""
    path = make(tmp_path, **good_arrays())
    why = f"does not apply to task 'classify': its sequences are its data's, {T} steps long"
    with pytest.raises(ConfigError, match=f"seq_len=50 {why}; drop seq_len="):
        tr.train(cell="rnn", task="classify", data=path, seq_len=50, hidden=4, steps=1, batch=4)
    with pytest.raises(ConfigError, match=f"seq_len=50 {why}"):
        tr.report.diagnose(cells=["rnn"], task="classify", data=path, seq_len=50, hidden=4, batch=4)
    runner = CliRunner()
    for command in ("train", "diagnose"):
        r = runner.invoke(cli.main, [command, "--task", "classify", "--data", path, "--cell", "rnn", "--seq-len", "50",
                                     "--hidden", "4", "--batch", "4", "--steps", "1"])
        assert r.exit_code == 1 and r.output.strip().splitlines() == [f"Error: --seq-len 50 {why}; drop --seq-len"]
    s = tr.train(cell="rnn", task="classify", data=path, seq_len=T, hidden=4, steps=1, batch=4)  # the file's own T
    assert s["seq_len"] == T


def test_other_tasks_take_no_lengths():
    assert tr.get_task("adding")(seq_len=5).lengths(np.zeros((3, 1))) is None
