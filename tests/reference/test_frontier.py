"""The frontier benchmark (``hyca_core.reference.frontier``) at a tiny size: every method runs, full
evaluations are counted, and the table keeps per method the best row at or below each share."""

import json

import pytest

from hyca_core.reference import frontier

STEPS = 8


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier")
    assert frontier.main(["--model", "flux", "--steps", str(STEPS), "--quick", "--out", str(out),
                          "--granularities", "final"]) == 0
    return json.loads((out / "results.json").read_text()), (out / "frontier.md").read_text()


def test_every_method_is_measured(result):
    data, table = result
    methods = {row["method"] for row in data["rows"]}
    assert {"fewer steps", "Spectrum", "L2P", "FreqCa", "FoCa (7/6, -1/6)", "FoCa (7/3, -5/3, 1/3)",
            "HyCa, no map", "HyCa, calibrated"} <= methods
    for method in methods:
        assert f"| {method} |" in table


def test_full_evaluations_are_counted_and_within_the_steps(result):
    data, _ = result
    for row in data["rows"]:
        assert 1 <= row["full"] <= STEPS, row
    for row in data["rows"]:
        if row["method"] == "HyCa, no map":  # the spread schedule: exactly its budget
            assert row["full"] in frontier.budgets(STEPS)
        if row["method"] == "fewer steps":
            assert row["setting"] == f"{row['full']} steps"


def test_the_frontier_is_the_best_row_at_or_below_each_share(result):
    data, _ = result
    for method, cells in data["frontier"].items():
        rows = [r for r in data["rows"] if r["method"] == method]
        for share, best in cells.items():
            cheap = [r for r in rows if r["full"] <= float(share) * STEPS + 1e-9]
            if not cheap:
                assert best is None
            else:
                assert best["psnr"] == max(r["psnr"] for r in cheap)


def test_frontier_of_rows():
    rows = [{"method": "a", "full": 2, "psnr": 30.0}, {"method": "a", "full": 5, "psnr": 40.0},
            {"method": "b", "full": 9, "psnr": 50.0}]
    table = frontier.frontier(rows, 20)
    assert table["a"][0.17]["psnr"] == 30.0 and table["a"][0.25]["psnr"] == 40.0
    assert table["b"][0.35] is None
    assert "| a | 30.00 | 30.00 | 40.00 | 40.00 | 40.00 |" in frontier.markdown(table, 20)


def test_a_rerun_of_some_methods_reuses_the_other_rows_of_the_same_setting(result, tmp_path):
    data, _ = result
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(data))
    out = tmp_path / "again"
    assert frontier.main(["--model", "flux", "--steps", str(STEPS), "--quick", "--out", str(out),
                          "--granularities", "final", "--methods", "nomap", "--reuse", str(earlier)]) == 0
    again = json.loads((out / "results.json").read_text())
    fresh = [r for r in again["rows"] if not r.get("reused")]
    assert fresh and {r["method"] for r in fresh} <= {"HyCa, no map", "HyCa, no map (interval)"}
    reused = [r for r in again["rows"] if r.get("reused")]
    assert {r["method"] for r in reused} >= {"fewer steps", "Spectrum", "HyCa, calibrated"}
    assert not {r["method"] for r in reused} & {"HyCa, no map"}
    # HyCa's rows at a granularity not sampled now are kept
    out = tmp_path / "module"
    assert frontier.main(["--model", "flux", "--steps", str(STEPS), "--quick", "--out", str(out),
                          "--granularities", "module", "--methods", "nomap", "--reuse", str(earlier)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    nomap = [r for r in rows if r["method"] == "HyCa, no map"]
    assert {r["setting"].split()[0] for r in nomap} == {"module", "final"}
    assert all(r.get("reused") for r in nomap if r["setting"].startswith("final"))
    assert not any(r.get("reused") for r in nomap if r["setting"].startswith("module"))
    # rows of another setting are refused, not mixed in
    with pytest.raises(SystemExit, match="steps"):
        frontier.main(["--model", "flux", "--steps", str(STEPS + 1), "--quick", "--out", str(tmp_path / "x"),
                       "--methods", "nomap", "--reuse", str(earlier)])
