"""Solver map files: bit-exact round trip, every kind of bad input named, the CLI."""

import dataclasses
import json
import struct
import subprocess
import sys

import pytest
import torch
from support import small_map
from safetensors import safe_open
from safetensors.torch import save_file

from hyca_core.forecast.predictor import FittedRule
from hyca_core.maps import FORMAT_NAME, SolverMapError, SolverMapMismatch, load_solver_map, save_solver_map, summarize, uniform_predictors
from hyca_core.maps.format import _checksum, _text_checksum


def test_save_load_round_trip_is_bit_exact(solver_map, tmp_path):
    path = tmp_path / "map.safetensors"
    save_solver_map(solver_map, str(path))
    loaded = load_solver_map(str(path))
    assert loaded.equals(solver_map)
    for name, scope in solver_map.scopes.items():
        other = loaded.scopes[name]
        assert torch.equal(scope.labels, other.labels) and torch.equal(scope.errors, other.errors)
        assert scope.fitted.keys() == other.fitted.keys()
        assert all(torch.equal(scope.fitted[n], other.fitted[n]) for n in scope.fitted)
    assert loaded.provenance["sampler"] == "euler" and loaded.license == "CC0-1.0"
    # and again: a loaded map saves and loads to the same map
    again = tmp_path / "again.safetensors"
    save_solver_map(loaded, str(again))
    assert load_solver_map(str(again)).equals(solver_map)


def test_file_holds_no_pickle_and_declares_its_format(solver_map, tmp_path):
    path = tmp_path / "map.safetensors"
    save_solver_map(solver_map, str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == "1"
    header = json.loads(meta["hyca"])
    assert header["fingerprint"] == solver_map.fingerprint
    assert b"\x80\x04" not in path.read_bytes()[:8]  # not a pickle stream


def test_predictors_follow_the_map(solver_map):
    bank = solver_map.predictors(3, "choose")
    predictor = bank("double_blocks.1.img_attn")
    column = solver_map.intervals.index(3)
    scope = solver_map.scopes["double_blocks.*.img_attn"]
    assert predictor.rules == tuple(solver_map.pool[int(c)] for c in scope.choices[column])
    fitted = solver_map.predictors(3, "fit")("single_blocks.0.total")
    assert all(isinstance(rule, FittedRule) and rule.interval == 3 for rule in fitted.rules)


def test_uncalibrated_interval_uses_nearest_solvers_never_fits(solver_map):
    bank = solver_map.predictors(7, "fit")
    predictor = bank("double_blocks.0.img_attn")
    assert all(isinstance(rule, str) for rule in predictor.rules)
    scope = solver_map.scopes["double_blocks.*.img_attn"]
    assert predictor.rules == tuple(solver_map.pool[int(c)] for c in scope.choices[-1])


def test_unknown_feature_in_the_bank_is_named(solver_map):
    with pytest.raises(KeyError, match="txt_mlp"):
        solver_map.predictors(3)("double_blocks.0.txt_mlp")
    assert uniform_predictors("taylor2")("anything").rules == ("taylor2",)


def test_map_for_another_model_is_refused(solver_map):
    arch = {"hidden_size": 16, "blocks": {"double": 2, "single": 1}, "features": ["double_blocks.0.img_attn"]}
    solver_map.check_model("flux", arch)
    with pytest.raises(SolverMapMismatch, match="family 'flux', the model is 'qwen_image'"):
        solver_map.check_model("qwen_image", arch)
    with pytest.raises(SolverMapMismatch, match="hidden size 16, the model has 3072"):
        solver_map.check_model("flux", {**arch, "hidden_size": 3072})
    with pytest.raises(SolverMapMismatch, match="blocks"):
        solver_map.check_model("flux", {**arch, "blocks": {"double": 19, "single": 38}})
    with pytest.raises(SolverMapMismatch, match="txt_mlp"):
        solver_map.check_model("flux", {**arch, "features": ["double_blocks.0.txt_mlp"]})


def test_mismatch_names_the_file_and_the_field(solver_map, tmp_path):
    path = tmp_path / "shared-by-someone.safetensors"
    save_solver_map(solver_map, str(path))
    loaded = load_solver_map(str(path))
    with pytest.raises(SolverMapMismatch) as info:
        loaded.check_model("hunyuan_video", {"hidden_size": 16, "blocks": {"double": 2, "single": 1}})
    assert str(path) in str(info.value) and "family" in str(info.value)


def test_provenance_is_dated_and_counts_runs(solver_map):
    assert len(solver_map.provenance["date"]) == 10 and solver_map.provenance["runs"] == 1
    assert solver_map.provenance["steps"] == 16


# -- bad files ------------------------------------------------------------------------------------
def saved(solver_map, tmp_path, name="map.safetensors"):
    path = tmp_path / name
    save_solver_map(solver_map, str(path))
    return path


def rewrite(path, edit_meta=None, edit_tensors=None, keep_checksum=False):
    """Re-save a map file with edited metadata/tensors (checksum recomputed unless asked not to)."""
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        header = json.loads(meta["hyca"])
        edit_meta(meta, header)
        meta["hyca"] = json.dumps(header)
    if not keep_checksum:
        meta["checksum"] = _checksum(tensors)
        meta["header_checksum"] = _text_checksum(meta["hyca"])
    save_file(tensors, str(path), metadata=meta)
    return path


def expect(path, field, match):
    with pytest.raises(SolverMapError) as info:
        load_solver_map(str(path))
    assert info.value.field == field
    assert str(path) in str(info.value) and match in str(info.value)


def test_missing_file(tmp_path):
    expect(tmp_path / "nope.safetensors", "file", "no such file")


def test_truncated_file(solver_map, tmp_path):
    path = saved(solver_map, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect(path, "file", "truncated")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "map.safetensors"
    path.write_bytes(b"this is not a map at all")
    expect(path, "file", "not a readable safetensors file")


def test_flipped_byte_in_tensor_data(solver_map, tmp_path):
    path = saved(solver_map, tmp_path)
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    data[8 + header_len + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    expect(path, "checksum", "corrupted")


def test_some_other_safetensors_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    expect(path, "format", "expected 'hyca-solver-map'")


def test_newer_format_version(solver_map, tmp_path):
    path = rewrite(saved(solver_map, tmp_path), lambda meta, h: meta.update(format_version="9"))
    expect(path, "format_version", "version 9 is not supported")


def test_unknown_solver_name(solver_map, tmp_path):
    path = rewrite(saved(solver_map, tmp_path), lambda meta, h: h["pool"].__setitem__(1, "rk4"))
    expect(path, "pool", "unknown solver 'rk4'")


def test_labels_out_of_range(solver_map, tmp_path):
    def edit(tensors):
        tensors["scopes/double_blocks.*.img_attn/labels"][3] = 7

    expect(rewrite(saved(solver_map, tmp_path), edit_tensors=edit), "scopes/double_blocks.*.img_attn/labels",
           "must lie in [0, 2)")


def test_choice_out_of_pool(solver_map, tmp_path):
    def edit(tensors):
        tensors["scopes/single_blocks.*.total/choices"][0, 0] = 42

    expect(rewrite(saved(solver_map, tmp_path), edit_tensors=edit), "scopes/single_blocks.*.total/choices",
           "must index the pool")


def test_hidden_size_that_does_not_match_the_labels(solver_map, tmp_path):
    path = rewrite(saved(solver_map, tmp_path), lambda meta, h: h["architecture"].update(hidden_size=3072))
    with pytest.raises(SolverMapError, match="has 16 channels but architecture.hidden_size is 3072"):
        load_solver_map(str(path))


def test_missing_scope_tensor(solver_map, tmp_path):
    path = rewrite(saved(solver_map, tmp_path), edit_tensors=lambda t: t.pop("scopes/single_blocks.*.total/errors"))
    expect(path, "scopes/single_blocks.*.total/errors", "tensor missing")


def test_fitted_weights_that_do_not_sum_to_one(solver_map, tmp_path):
    def edit(tensors):
        tensors["scopes/single_blocks.*.total/fit/3"][0, 1, 0] += 0.5

    expect(rewrite(saved(solver_map, tmp_path), edit_tensors=edit), "scopes/single_blocks.*.total/fit/3", "sum to 1")


def test_nan_in_fitted_weights(solver_map, tmp_path):
    def edit(tensors):
        tensors["scopes/single_blocks.*.total/fit/2"][0, 1, 0] = float("nan")

    expect(rewrite(saved(solver_map, tmp_path), edit_tensors=edit), "scopes/single_blocks.*.total/fit/2", "NaN")


def test_broken_metadata_json(solver_map, tmp_path):
    path = saved(solver_map, tmp_path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["hyca"] = "{not json"
    save_file(tensors, str(path), metadata=meta)
    expect(path, "header_checksum", "does not match")  # the header checksum notices first
    meta["header_checksum"] = _text_checksum(meta["hyca"])  # signed, and still no JSON
    save_file(tensors, str(path), metadata=meta)
    expect(path, "hyca", "not valid JSON")
    del meta["header_checksum"]  # as in maps written before it existed, or with the key removed
    save_file(tensors, str(path), metadata=meta)
    expect(path, "header_checksum", "missing")


def test_missing_required_field(solver_map, tmp_path):
    path = rewrite(saved(solver_map, tmp_path), lambda meta, h: h.pop("family"))
    expect(path, "family", "missing")


def test_fit_mode_without_fits(tmp_path):
    m = small_map(fit=False)
    assert m.mode == "choose"
    m.mode = "fit"
    with pytest.raises(SolverMapError, match="holds no fitted weights"):
        save_solver_map(m, str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


def test_failed_save_keeps_the_previous_file(solver_map, tmp_path):
    path = saved(solver_map, tmp_path)
    before = path.read_bytes()
    solver_map.pool = ("reuse", "nonsense")
    with pytest.raises(SolverMapError):
        save_solver_map(solver_map, str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["map.safetensors"]  # no temp file left


# -- CLI ------------------------------------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "hyca_core.maps", *args], capture_output=True, text=True)


def test_cli_info_prints_a_summary(solver_map, tmp_path):
    path = saved(solver_map, tmp_path)
    run = cli("info", str(path))
    assert run.returncode == 0, run.stderr
    for text in ("family       flux", "fingerprint", "scope double_blocks.*.img_attn", "N=3", "best uniform",
                 "author       tests", "sampler=euler"):
        assert text in run.stdout
    assert summarize(solver_map) in run.stdout or "N=4" in run.stdout


def test_cli_validate_ok_and_failures(solver_map, tmp_path):
    path = saved(solver_map, tmp_path)
    ok = cli("validate", str(path))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    data = path.read_bytes()
    path.write_bytes(data[:100])
    bad = cli("validate", str(path))
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "file" in lines[0]


def test_an_unsigned_map_is_refused_until_its_user_signs_it(solver_map, tmp_path):
    """Issue 24, item 5: the header checksum is required (a renamed key let 42 of 300 header flips
    through); ``maps sign`` signs a file its user trusts, checking everything else."""
    path = saved(solver_map, tmp_path)

    def unsign(meta, header):
        header["description"] = "edited by hand"
        meta["header_checksum_renamed"] = meta.pop("header_checksum")

    rewrite(path, unsign, keep_checksum=True)
    expect(path, "header_checksum", "python -m hyca_core.maps sign")
    assert cli("validate", str(path)).returncode == 1
    signed = cli("sign", str(path))
    assert signed.returncode == 0 and signed.stdout.startswith("signed:"), signed.stderr
    loaded = load_solver_map(str(path))
    assert loaded.description == "edited by hand" and loaded.equals(
        dataclasses.replace(solver_map, description="edited by hand"))
    # what signing does not vouch for: the tensors' checksum, and every field
    rewrite(path, keep_checksum=True, edit_tensors=lambda t: t["scopes/double_blocks.*.img_attn/errors"].mul_(2))
    refused = cli("sign", str(path))
    assert refused.returncode == 1 and "checksum" in refused.stderr
    rewrite(path, lambda meta, header: header.update(pool=["reuse", "nonsense"]))
    refused = cli("sign", str(path))
    assert refused.returncode == 1 and "unknown solver" in refused.stderr


@pytest.mark.parametrize("field, edit", [
    ("intervals", lambda h: h.update(intervals=list(range(2, 100_002)))),
    ("hyca", lambda h: h.update(intervals=list(range(2, 200_002)))),  # over a MiB of JSON: not even parsed
    ("intervals", lambda h: h.update(intervals=[2, 3, 400])),
    ("scopes", lambda h: h["scopes"].update({f"s{i}": {"features": []} for i in range(2000)})),
    ("architecture.features", lambda h: h["architecture"].update(features=["f"] * 5000)),
    ("provenance.schedules", lambda h: h["provenance"].update(schedules={str(i): {} for i in range(100)})),
    ("provenance", lambda h: h["provenance"].update(notes="n" * 300_000)),
    ("scopes", lambda h: h["scopes"].update({"s" * 1000: {"features": []}})),
])
def test_lists_beyond_what_a_sampler_uses_are_refused_by_name_at_once(solver_map, tmp_path, field, edit):
    """Issue 24, item 3: a valid map of 200,000 intervals took the routes minutes."""
    import time

    path = rewrite(saved(solver_map, tmp_path), lambda meta, header: edit(header))
    started = time.perf_counter()
    expect(path, field, "")
    assert time.perf_counter() - started < 1.0


def test_closed_loop_record_is_described_and_malformed_entries_are_left_out(tmp_path):
    from hyca_core.maps import describe, summarize, verified, verified_text

    m = small_map()
    m.provenance["closed_loop"] = {"intervals": {
        "2": {"kept": "map", "gain_db": 1.234}, "3": {"kept": "hermite", "gain_db": 0.5},
        "4": {"kept": "<script>", "gain_db": 1.0}}}
    path = tmp_path / "checked.safetensors"
    save_solver_map(m, str(path))
    loaded = load_solver_map(str(path))
    assert verified(loaded) == [{"interval": 2, "kept": "map", "gain_db": 1.23},
                                {"interval": 3, "kept": "hermite", "gain_db": 0.5}]
    assert describe(loaded)["verified"] == verified(loaded)
    assert "N=2 map +1.23 dB" in summarize(loaded) and "N=3 uniform hermite" in summarize(loaded)
    assert "+1.23 dB over uniform taylor1 at N=2" in verified_text(loaded, 2)
    assert "lost to uniform hermite" in verified_text(loaded, 3)
    assert verified_text(loaded, 4) is None
    for junk in ("text", {"intervals": [1]}, {"intervals": {"2": {"kept": "map", "gain_db": "NaN"}}},
                 {"intervals": {"2": {"kept": "map", "gain_db": True}}}):
        m.provenance["closed_loop"] = junk
        assert verified(m) == []


def test_closed_loop_gains_name_the_solver_they_were_measured_over():
    """The check measures over the uncalibrated default (hermite1 since issue 22, taylor1 before);
    the text said taylor1 whatever the record held."""
    from hyca_core.maps import describe, summarize, verified_text

    m = small_map()
    m.provenance["closed_loop"] = {"default": "hermite1", "intervals": {"2": {"kept": "map", "gain_db": 1.0}}}
    assert "+1.00 dB over uniform hermite1 at N=2" in verified_text(m, 2)
    assert describe(m)["verified_over"] == "hermite1" and "(over uniform hermite1, held-out seeds)" in summarize(m)
    m.provenance["closed_loop"]["default"] = "<script>"  # free JSON: an unknown name is not shown
    assert describe(m)["verified_over"] == "taylor1"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_maps_are_written_with_the_users_umask(solver_map, tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = tmp_path / "map.safetensors"
        save_solver_map(solver_map, str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
