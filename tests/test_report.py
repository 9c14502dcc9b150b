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
