"""The lab's sweep behind HyCa Apply's no-map default, at a tiny size."""

import json

from hyca_core.reference import defaults, frontier
from hyca_core.forecast.schedule import spread_positions


def test_every_candidate_is_scored_at_every_budget_on_its_spread_placement(tmp_path):
    out = tmp_path / "rows.json"
    assert defaults.main(["--model", "flux", "--steps", "8", "--granularities", "final", "--solvers", "reuse",
                          "hermite1", "--spreads", "2:0.8", "1:1.0", "--runs", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(frontier.budgets(8)) * 2 * 2
    for row in rows:
        assert row["full"] == list(spread_positions(8, row["b"], row["tail"], row["warp"]))
        assert 0 < row["psnr"] <= 99


def test_a_malformed_spread_rule_is_refused_with_its_form(capsys):
    import pytest

    with pytest.raises(SystemExit):
        defaults.main(["--spreads", "2-0.8"])
    assert "tail:warp, e.g. 2:0.8, got '2-0.8'" in capsys.readouterr().err


def test_the_anchor_precision_lab_measures_every_precision(tmp_path):
    """``python -m hyca_core.reference.anchor_precision`` at a tiny size: a row per precision, each
    scored and holding fewer bytes than the last."""
    import json

    from hyca_core.reference import anchor_precision

    out = tmp_path / "rows.json"
    anchor_precision.main(["--model", "flux", "--steps", "6", "--intervals", "3", "--granularities", "block",
                           "--seeds", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["model", "bf16", "int8"] and rows[0]["vs_first_db"] == 0
    assert rows[0]["anchor_bytes"] > rows[1]["anchor_bytes"] > rows[2]["anchor_bytes"] > 0
    assert all(r["psnr"] > 20 for r in rows)


def test_the_anchor_precision_lab_compares_per_cluster_anchor_counts(tmp_path):
    """``--calibrated``: a calibrated map sampled with each channel group at its own anchor count and
    with every channel at its feature's most: the same images, fewer or as many bytes."""
    import json

    from hyca_core.reference import anchor_precision

    out = tmp_path / "rows.json"
    anchor_precision.main(["--model", "flux", "--steps", "8", "--intervals", "3", "--granularities", "block",
                           "--seeds", "1", "--calibrated", "--clusters", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["per cluster", "per feature"]
    assert rows[0]["psnr"] == rows[1]["psnr"] > 20 and 0 < rows[0]["anchor_bytes"] <= rows[1]["anchor_bytes"]
