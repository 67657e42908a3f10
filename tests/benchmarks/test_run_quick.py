"""The benchmark suite runs end to end on a tiny config and writes its report (no timings checked)."""

import keras
import pytest

from benchmarks import report, run

TINY = dict(
    vocabulary_size=97, num_layers=2, hidden_dim=32, intermediate_dim=64,
    num_query_heads=4, num_key_value_heads=2, head_dim=8, sliding_window_size=16,
)


@pytest.mark.slow
def test_quick_suite_runs_and_reports(tmp_path, monkeypatch):
    backend = keras.backend.backend()
    result = run.run(
        backend, quick=True, only=["prefill_b1", "decode_b1"], repeats=1, write=False, config=TINY
    )
    for name in ("prefill_b1", "decode_b1"):
        entry = result["results"][name]
        assert entry["ours"] > 0 and entry["theirs"] > 0
        assert entry["ratio"] == pytest.approx(entry["ours"] / entry["theirs"])
    assert "ceilings" in result["results"]  # MFU needs the measured matmul ceiling

    monkeypatch.setattr(report, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(report, "RESULTS_MD", str(tmp_path / "RESULTS.md"))
    monkeypatch.setattr(report, "RESULTS_PNG", str(tmp_path / "RESULTS.png"))
    (tmp_path / "RESULTS.md").write_text(f"# notes kept\n{report.BEGIN}\nold\n{report.END}\nafter\n")
    report.save(result, quick=True)
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# notes kept") and text.rstrip().endswith("after")
    assert "| prefill_b1 (tokens/s) |" in text and "old" not in text
    assert (tmp_path / "RESULTS.png").stat().st_size > 0
