"""``diagnose``'s report: its schema, and verdicts that follow the published thresholds."""
import numpy as np

import tinygrad_rnn as tr


def test_diagnose_report_schema():
    report = tr.report.diagnose(cells=("rnn", "lstm"), seq_len=12, hidden=8, batch=4)
    assert report["task"] == "adding" and report["seq_len"] == 12
    # the thresholds the README documents, and every verdict follows them
    th = report["thresholds"]
    assert th == {"vanishing_ratio": 1e-3, "exploding_ratio": 1e3, "horizon_fraction": 1e-3}
    for entry in report["cells"]:
        assert np.array(entry["grad_norm_per_step"]).shape == (1, 12)
        ratio = entry["ratio_first_last"]
        expected = ("vanishing" if ratio < th["vanishing_ratio"] else
                    "exploding" if ratio > th["exploding_ratio"] else "healthy")
        assert entry["verdict"] == entry["final_verdict"] == expected
        assert {"horizon", "decay_rate", "jacobian_spectral_norm", "recurrent_spectral_radius",
                "gate_saturation", "param_grad_norms"} <= set(entry)
    assert "c_grad_norm_per_step" in report["cells"][1]


def test_a_report_prints_as_the_cli_table_and_keeps_its_signature():
    import inspect
    params = inspect.signature(tr.report.diagnose).parameters
    assert {"cells", "task", "seq_len", "hidden", "remat", "jacobian_max_steps"} <= set(params)
    assert params["seq_len"].default == 100
    report = tr.report.diagnose(cells=("gru",), seq_len=8, hidden=4, batch=2)
    text = str(report)
    assert text == report.format() == tr.report.format_report(report)
    assert text.startswith("task adding, T=8, hidden 4") and "gru" in text and "verdict: vanishing if" in text
    import json
    assert json.loads(json.dumps(report))["cells"][0]["cell"] == "gru"  # still a plain JSON-able dict


def test_long_sequences_measure_an_evenly_spaced_subset_of_jacobians():
    report = tr.report.diagnose(cells=("rnn",), seq_len=30, hidden=3, batch=2, jacobian_max_steps=4)
    spectrum = report["cells"][0]["jacobian_spectral_norm"]
    assert spectrum["measured_steps"] == 4 and spectrum["steps"] == [0, 10, 19, 29]
    assert "4 of 30 steps measured" in spectrum["note"] and len(spectrum["per_step"]) == 4
    assert "step Jacobians: 4 of 30 steps measured" in str(report)
