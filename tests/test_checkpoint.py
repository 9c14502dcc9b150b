"""Checkpoints: vocabularies travel with text models, every field is validated, and
--resume refuses options that conflict with the run (issue 9, items 3, 6 and 7); they are
safetensors files, hostile ones are one-line errors, and the .npz checkpoints of earlier
versions still resume exactly (issue 20, part 3)."""
import io
import json
import struct
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import checkpoint, limits, tasks
from tinygrad_rnn.training import generate, train

TINY = dict(cell="rnn", task="sum", seq_len=4, hidden=3, batch=2, steps=2)


pytestmark = pytest.mark.usefixtures("clean_plugins")


def _tamper(path, meta_change=None, arrays_change=None):
    meta, arrays = checkpoint.load(path)
    for k in ("format", "version"):
        meta.pop(k)
    if meta_change:
        meta_change(meta)
    if arrays_change:
        arrays_change(arrays)
    checkpoint.save(path, meta, arrays)


def _text_run(tmp_path, text, **kw):
    data = tmp_path / "corpus.txt"
    data.write_text(text)
    path = str(tmp_path / "char.npz")
    args = dict(cell="gru", task="text", data=str(data), seq_len=8, hidden=6, batch=4, steps=3, save=path)
    args.update(kw)
    train(**args)
    return data, path


# ---- item 3: text checkpoints carry their vocabulary ----------------------------------
def test_generate_needs_no_training_file_and_an_edited_file_does_not_shift_the_mapping(tmp_path):
    data, path = _text_run(tmp_path, "the cat sat on the mat. " * 30 + "zq")
    before = generate(path, prime="the", length=40, seed=3)
    data.write_text("the cat sat on the mat. " * 30)  # 'z' and 'q' gone: a rebuilt vocab would shift
    assert generate(path, prime="the", length=40, seed=3) == before
    data.unlink()
    assert generate(path, prime="the", length=40, seed=3) == before
    meta, _ = checkpoint.load(path)
    assert meta["config"]["vocab"] == "".join(sorted(set("the cat sat on the mat. zq")))


def test_resume_refuses_a_training_file_with_characters_outside_the_vocabulary(tmp_path):
    data, path = _text_run(tmp_path, "abcabcabc ab " * 40)
    data.write_text("abcabcabc ab " * 39 + "abcdefg")
    with pytest.raises(tasks.TaskError, match="2 character.*'dg'|4 character.*the file changed"):
        train(cell="gru", task="text", seq_len=8, hidden=6, batch=4, steps=5, resume=path)


def test_one_hot_by_indexing_never_builds_a_v_by_v_matrix(monkeypatch):
    monkeypatch.setattr(np, "eye", lambda *a, **k: pytest.fail("np.eye called"))
    out = tasks.one_hot(np.array([[0, 22000], [5, 1]]), 22001)
    assert out.shape == (2, 2, 22001) and out.sum() == 4 and out[0, 1, 22000] == 1
    task = tasks.Text.from_vocab([chr(0x4e00 + i) for i in range(22000)], seq_len=4)
    x, y = task.pairs(np.array([[1, 2], [3, 4], [5, 6]]))
    assert x.shape == (2, 2, 22000) and x[1, 0, 3] == 1


# ---- item 7: every field validated ------------------------------------------------------
@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(step=-1), "'step' must be an integer >= 0, got -1"),
    (lambda m: m.update(step="3"), "'step' must be an integer >= 0, got '3'"),
    (lambda m: m.update(step=10 ** 30), r"'step' must be an integer in \[0, 2\*\*63 - 1\], got 1000000000000000000000000000000"),
    (lambda m: m["config"].update(seed=10 ** 30), r"config field 'seed' must be an integer in \[0, 2\*\*63 - 1\]"),
    (lambda m: m["config"].update(lr=-1), "config field 'lr' must be a finite number > 0 and <= 1e\\+06, got -1"),
    (lambda m: m["config"].update(lr=0), "config field 'lr' must be a finite number > 0 and <= 1e\\+06, got 0"),
    (lambda m: m["config"].update(optimizer="lbfgs"), "config field 'optimizer' must be one of sgd, adam, rmsprop"),
    (lambda m: m["config"].update(hidden=2.5), "config field 'hidden' must be an integer >= 1"),
    (lambda m: m["config"].update(clip_norm=-1), "config field 'clip_norm' must be null or a finite number >= 0"),
    (lambda m: m.update(rng=[1, 2]), "'rng' is not a random generator state"),
])
def test_header_fields_are_checked_by_type_and_range(tmp_path, change, match):
    path = str(tmp_path / "run.npz")
    train(**TINY, save=path)
    _tamper(path, meta_change=change)
    with pytest.raises(checkpoint.CheckpointError, match=match):
        train(**dict(TINY, steps=4), resume=path)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update({"optim/lr": np.asarray(-1.0)}), "optimizer state 'lr' must be a finite number >= 0"),
    (lambda a: a.update({"optim/steps": np.asarray(2 ** 63, np.uint64)}),
     r"optimizer state 'steps' must be an integer in \[0, 2\*\*63 - 1\], got 9223372036854775808"),
    (lambda a: a.update({"optim/0.m": np.zeros((7, 7), np.float32)}), r"state '0.m' must be a finite float array of shape"),
    (lambda a: a.update({"optim/0.momentum": np.zeros((3, 1), np.float32)}), "unexpected entry '0.momentum'"),
    (lambda a: a.update({"optim/99.m": np.zeros(3, np.float32)}), "unexpected entry '99.m'"),
    (lambda a: a.update({"optim/0.v": np.full(a["optim/0.v"].shape, np.nan, np.float32)}), "finite float array"),
    (lambda a: a.update({"param/rnn.weight_hh_l0": np.zeros((5, 5), np.float32)}), r"rnn.weight_hh_l0 has shape \(5, 5\)"),
    (lambda a: a.pop("param/rnn.bias_ih_l0"), r"missing \[.rnn.bias_ih_l0.\]"),
])
def test_optimizer_state_and_parameters_are_checked_against_the_model(tmp_path, change, match):
    path = str(tmp_path / "run.npz")
    train(**TINY, save=path)
    _tamper(path, arrays_change=change)
    with pytest.raises(checkpoint.CheckpointError, match=match):
        train(**dict(TINY, steps=4), resume=path)


def test_resume_with_a_conflicting_explicit_option_is_an_error_naming_it(tmp_path):
    path = str(tmp_path / "run.npz")
    train(**dict(TINY, hidden=8), save=path)
    result = CliRunner().invoke(cli.main, ["train", "--resume", path, "--hidden", "32", "--steps", "4"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: --hidden 32 conflicts with the resumed run's hidden 8 in {path!r}; "
                                     "drop --hidden to continue that run, or start a new one without --resume")
    result = CliRunner().invoke(cli.main, ["train", "--resume", path, "--lr", "0.5", "--steps", "4"])
    assert result.exit_code == 1 and "--lr 0.5 conflicts with the resumed run's lr 0.001" in result.stderr
    # the same values, or options that are not run settings, are fine
    result = CliRunner().invoke(cli.main, ["train", "--resume", path, "--hidden", "8", "--steps", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["start_step"] == 2
    with pytest.raises(Exception, match="seq_len=9 conflicts"):
        train(cell="rnn", task="sum", seq_len=9, steps=5, resume=path)


# ---- item 6: a member claiming a huge shape ---------------------------------------------
def _npy_claiming(shape, payload=b"\0" * 16):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def as_npz(path):
    """Rewrite the checkpoint at ``path`` as versions before safetensors wrote it: an .npz of
    its arrays with the JSON header in a ``__meta__`` member."""
    meta, arrays = checkpoint.load(path)
    header = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays, __meta__=header)
    assert open(path, "rb").read(2) == b"PK"


def test_a_checkpoint_member_claiming_a_huge_shape_is_refused_before_allocating(tmp_path, monkeypatch):
    path = str(tmp_path / "run.npz")
    train(**TINY, save=path)
    as_npz(path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("param/huge.npy", _npy_claiming((10 ** 11,)))
    monkeypatch.setattr(np, "zeros", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(checkpoint.CheckpointError, match=r"member 'param/huge' claims shape \(100000000000,\) "
                                                          r"of float32 \(373 GB\) but holds only 16 B"):
        checkpoint.load(path)


def test_a_npy_series_header_claiming_1e11_elements_is_refused(tmp_path):
    path = tmp_path / "big.npy"
    path.write_bytes(_npy_claiming((10 ** 11,)))
    with pytest.raises(limits.ResourceError, match=r"claims shape \(100000000000,\).*corrupt or truncated"):
        tasks.load_series(str(path))
    result = CliRunner().invoke(cli.main, ["train", "--task", "series", "--data", str(path), "--steps", "1"])
    assert result.exit_code == 1 and "claims shape (100000000000,)" in result.stderr


def test_resume_finds_a_moved_training_file_given_with_data(tmp_path):
    data, path = _text_run(tmp_path, "abcabcabc ab " * 40)
    moved = tmp_path / "moved.txt"
    data.rename(moved)
    summary = train(cell="gru", task="text", data=str(moved), seq_len=8, hidden=6, batch=4, steps=5, resume=path)
    assert summary["start_step"] == 3 and summary["steps"] == 5
    other = tmp_path / "other.txt"
    other.write_text("abc " * 100)
    moved.rename(data)  # back in place: a different --data is now a conflict
    with pytest.raises(Exception, match="data=.*other.txt' conflicts with the resumed run's data"):
        train(cell="gru", task="text", data=str(other), seq_len=8, hidden=6, batch=4, steps=5, resume=path)


@pytest.mark.parametrize("change", [lambda a: a.update({"extra/cursors": np.full(4, 10 ** 9)}),
                                    lambda a: a.update({"extra/state0": np.zeros((3, 3), np.float32)}),
                                    lambda a: a.pop("extra/state0")])
def test_a_truncated_bptt_position_that_does_not_fit_is_refused(tmp_path, change):
    data, path = _text_run(tmp_path, "abcdefgh " * 80, bptt=5)
    _tamper(path, arrays_change=change)
    with pytest.raises(checkpoint.CheckpointError, match="truncated-BPTT position does not fit this run"):
        train(cell="gru", task="text", data=str(data), seq_len=8, hidden=6, batch=4, steps=5, bptt=5, resume=path)


# ---- hand-edited checkpoints: every field, one line naming it, never a traceback ----------
def _set(section, key, value):
    def change(m):
        (m if section is None else m[section])[key] = value
    return change


@pytest.mark.parametrize("change,match", [
    (_set("scheduler", "base_lr", None), "scheduler field 'base_lr' must be a finite number >= 0, got None"),
    (_set("scheduler", "lr", "x"), "scheduler field 'lr' must be a finite number >= 0, got 'x'"),
    (_set("scheduler", "warmup", "x"), "scheduler field 'warmup' must be an integer >= 0, got 'x'"),
    (_set("scheduler", "last_epoch", 1.5), "scheduler field 'last_epoch' must be an integer >= 0, got 1.5"),
    (_set("scheduler", "extra", 1), r"unknown scheduler \(ConstantLR\) field\(s\) 'extra'"),
    (lambda m: m["scheduler"].pop("lr"), "scheduler state is missing 'lr'"),
    (_set(None, "scheduler", None), "header field 'scheduler' must be an object, got None"),
    (_set("early_stop", "best", "x"), "early_stop field 'best' must be a number"),
    (_set("early_stop", "bad", -7), "early_stop field 'bad' must be an integer >= 0, got -7"),
    (_set("early_stop", "bad", 2 ** 63), r"early_stop field 'bad' must be an integer in \[0, 2\*\*63 - 1\], got 9223"),
    (_set("early_stop", "best_step", 2 ** 63), r"'best_step' must be an integer in \[0, 2\*\*63 - 1\], got 9223"),
    (_set("scheduler", "last_epoch", 10 ** 30), r"scheduler field 'last_epoch' must be an integer in \[0, 2\*\*63 - 1\]"),
    (_set("early_stop", "best_step", "y"), "early_stop field 'best_step' must be null or an integer >= 0"),
    (_set("early_stop", "best_step", 99), r"'best_step' \(99\) is past the checkpoint's step 2"),
    (_set(None, "early_stop", None), "header field 'early_stop' must be an object with keys best, best_step, bad"),
    (_set("early_stop", "worst", 1), "header field 'early_stop' must be an object with keys"),
    (_set("config", "cell_options", {"x": 1}), "config field 'cell_options' {'x': 1} does not fit the cell"),
    (_set("config", "cell_options", {"nonlinearity": [1]}), "'cell_options' entry 'nonlinearity' must be text"),
    (_set("config", "init", "nope"), "config field 'init' must be one of pytorch, .*, got 'nope'"),
    (_set("config", "hiden", 8), r"unknown config field\(s\) 'hiden'"),
    (_set(None, "note", "mine"), r"unknown header field\(s\) 'note'"),
])
def test_hand_edited_headers_are_one_line_errors_naming_the_field(tmp_path, change, match):
    path = str(tmp_path / "run.npz")
    train(**TINY, save=path)
    _tamper(path, meta_change=change)
    result = CliRunner().invoke(cli.main, ["train", "--resume", path, "--steps", "4"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path!r}"), result.output
    import re
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_])
def test_integer_parameter_arrays_are_refused_not_truncated(tmp_path, dtype):
    path = str(tmp_path / "run.npz")
    train(**TINY, save=path)
    _tamper(path, arrays_change=lambda a: a.update({"param/rnn.weight_hh_l0": a["param/rnn.weight_hh_l0"].astype(dtype)}))
    with pytest.raises(checkpoint.CheckpointError, match=f"parameter 'rnn.weight_hh_l0' holds {np.dtype(dtype)} "
                                                         "values, not floats"):
        train(**dict(TINY, steps=4), resume=path)


def test_a_checkpoint_with_a_plateau_schedule_and_early_stopping_resumes(tmp_path):
    path = str(tmp_path / "run.npz")
    run = dict(TINY, lr_schedule="plateau", eval_every=1, patience=5, steps=3)
    train(**run, save=path)
    assert train(**dict(run, steps=4), resume=path)["start_step"] == 3


# ---- issue 20: safetensors checkpoints; .npz ones of earlier versions still resume ----------
def test_checkpoints_are_safetensors_with_the_header_in_their_metadata(tmp_path):
    from safetensors import safe_open
    path = str(tmp_path / "run.safetensors")
    train(**TINY, save=path)
    with safe_open(path, "np") as f:
        header = json.loads(f.metadata()["tinygrad_rnn"])
        assert "param/rnn.weight_hh_l0" in f.keys() and f.get_tensor("optim/steps").shape == ()
    assert header["format"] == "tinygrad-rnn-checkpoint" and header["step"] == 2
    assert checkpoint.is_checkpoint(path)


def test_an_npz_checkpoint_of_an_earlier_version_resumes_bit_exactly(tmp_path):
    straight, split = str(tmp_path / "straight.ck"), str(tmp_path / "half.npz")
    run = dict(TINY, cell="lstm", eval_every=1, patience=9)  # a cosine schedule depends on steps
    train(**dict(run, steps=4), save=straight)
    train(**dict(run, steps=2), save=split)
    as_npz(split)
    assert checkpoint.is_checkpoint(split)
    assert train(**dict(run, steps=4), resume=split, save=split)["start_step"] == 2
    assert open(split, "rb").read(2) != b"PK"  # saved again: now safetensors
    (m1, a1), (m2, a2) = checkpoint.load(straight), checkpoint.load(split)
    assert sorted(a1) == sorted(a2) and m1["rng"] == m2["rng"] and m1["step"] == m2["step"] == 4
    for k in a1:
        assert a1[k].dtype == a2[k].dtype and np.array_equal(a1[k], a2[k]), k


def _safetensors_bytes(header, data=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("content,match", [
    (b"", "no such|truncated: 0 byte"),
    (b"\x05\x00\x00", r"truncated: 3 byte\(s\), and a safetensors file starts with an 8-byte header length"),
    (struct.pack("<Q", 2 ** 63) + b"{}", r"claims a 9223372036854775808-byte header but holds 2 byte\(s\).*"
                                          "at most 100 MB"),
    (struct.pack("<Q", 40) + b"{}", "claims a 40-byte header but holds 2 byte"),
    (struct.pack("<Q", 3) + b"{x}", "malformed safetensors header"),
    (struct.pack("<Q", 2) + b"[]", r"malformed safetensors header \(not a JSON object\)"),
    (_safetensors_bytes({"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0\0"),
     "tensor 'a' has dtype 'BF16', which NumPy cannot hold"),
    (_safetensors_bytes({"a": {"dtype": "F32", "shape": [10 ** 11], "data_offsets": [0, 4 * 10 ** 11]}}, b"\0" * 8),
     r"tensor 'a' claims shape \(100000000000,\) of float32 \(373 GB\).*holds 8 B of data: corrupt or truncated"),
    (_safetensors_bytes({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
     r"claims shape \(3,\) of float32"),
    (_safetensors_bytes({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "malformed shape"),
    (_safetensors_bytes({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "malformed entry"),
    (_safetensors_bytes({"__metadata__": {"tinygrad_rnn": 3}}), "malformed safetensors metadata"),
    (_safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "a safetensors file but not a tinygrad_rnn checkpoint.*--weights"),
    (_safetensors_bytes({"__metadata__": {"tinygrad_rnn": "{"}}), "corrupt header"),
    (_safetensors_bytes({"__metadata__": {"tinygrad_rnn": '{"format": "x"}'}}), "is not a tinygrad_rnn checkpoint"),
])
def test_hostile_safetensors_files_are_one_line_errors(tmp_path, monkeypatch, content, match):
    path = tmp_path / "bad.ck"
    path.write_bytes(content)
    monkeypatch.setattr(np, "zeros", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(checkpoint.CheckpointError, match=match) as info:
        checkpoint.load(str(path))
    assert "\n" not in str(info.value)
    assert not checkpoint.is_checkpoint(str(path))
    result = CliRunner().invoke(cli.main, ["train", "--resume", str(path), "--steps", "3"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output


def test_a_truncated_safetensors_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.ck"
    train(**TINY, save=str(path))
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(str(path))
