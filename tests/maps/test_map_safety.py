"""Shared maps are untrusted input to a long-running server (issue 11): each defect found by
mutating valid maps gets its regression test here. Every bad file must raise ``SolverMapError``
naming the file and the field, nothing else, and a loaded map must not depend on its file."""

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from support import small_map

from hyca_core.maps.files import MAX_FILE_BYTES
from hyca_core.maps.validation import MAX_JSON_DEPTH
from hyca_core.maps import SolverMapError, load_solver_map, save_solver_map
from hyca_core.maps.format import _checksum, _text_checksum


@pytest.fixture
def path(tmp_path):
    out = tmp_path / "map.safetensors"
    save_solver_map(small_map(fit=True), str(out))
    return out


def parts(path):
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def write(path, meta, tensors, fix_checksums=True):
    if fix_checksums:
        meta["checksum"] = _checksum(tensors)
        meta["header_checksum"] = _text_checksum(meta["hyca"])
    save_file(tensors, str(path), metadata=meta)


def edit_header(path, edit):
    meta, tensors = parts(path)
    header = json.loads(meta["hyca"])
    edit(header)
    meta["hyca"] = json.dumps(header)
    write(path, meta, tensors)


def refused(path, field=None, match=""):
    with pytest.raises(SolverMapError) as info:
        load_solver_map(str(path))
    assert str(path) in str(info.value) and match in str(info.value)
    if field is not None:
        assert info.value.field == field
    return info.value


# -- a loaded map owns its data ------------------------------------------------------------------
def predict(m):
    predictor = m.predictors(3, "fit")(next(iter(m.scopes)))
    anchors = [torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return predictor.predict(anchors, [6.0, 3.0, 0.0], 7.0)


def test_a_loaded_map_survives_its_file_being_truncated_replaced_or_rewritten(path, tmp_path):
    loaded = load_solver_map(str(path))
    reference = small_map(fit=True)
    before = predict(loaded)
    other = tmp_path / "other.safetensors"
    save_solver_map(small_map(fit=False, channels=16, clusters=3), str(other))
    with open(path, "r+b") as f:  # truncate in place (a memory-mapped map would get SIGBUS here)
        f.truncate(64)
    assert loaded.equals(reference) and torch.equal(predict(loaded), before)
    with open(path, "wb") as f:  # same size, other bytes
        f.write(b"\x7f" * os.path.getsize(other))
    assert loaded.equals(reference)
    os.replace(other, path)  # a smaller valid map over it
    assert loaded.equals(reference) and torch.equal(predict(loaded), before)
    assert not load_solver_map(str(path)).equals(reference)  # the next load sees the new file
    for scope in loaded.scopes.values():  # owned and writable: no buffer shared with anything read
        scope.labels.add_(0)


# -- metadata --------------------------------------------------------------------------------------
def test_a_missing_format_version_is_named(path):
    meta, tensors = parts(path)
    del meta["format_version"]
    write(path, meta, tensors)
    refused(path, "format_version", "missing")


@pytest.mark.parametrize("version", ["x", "٣", "1" * 5000, " 1"])
def test_a_malformed_format_version_is_named(path, version):
    meta, tensors = parts(path)
    meta["format_version"] = version
    write(path, meta, tensors)
    refused(path, "format_version", "not an integer")


@pytest.mark.parametrize("features, match", [(5, "list of feature names"), ("single_blocks.0.total", "list of"),
                                             ([1, 2], "list of")])
def test_scope_features_must_be_a_list_of_names(path, features, match):
    edit_header(path, lambda h: next(iter(h["scopes"].values())).update(features=features))
    refused(path, None, match)


def test_a_scope_entry_must_be_an_object(path):
    def edit(header):
        name = next(iter(header["scopes"]))
        header["scopes"][name] = ["not", "an", "object"]
    edit_header(path, edit)
    refused(path, None, "must be an object")


def test_deeply_nested_metadata_is_refused_without_recursion_error(path):
    meta, tensors = parts(path)
    header = json.loads(meta["hyca"])
    meta["hyca"] = json.dumps(header)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    write(path, meta, tensors)
    refused(path, "hyca", "nested deeper")
    header["provenance"]["deep"] = json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    meta["hyca"] = json.dumps(header)
    write(path, meta, tensors)
    refused(path, "hyca", "nested deeper")


def test_a_huge_integer_is_refused(path):
    meta, tensors = parts(path)
    meta["hyca"] = meta["hyca"][:-1] + ', "big": ' + "9" * 5000 + "}"
    write(path, meta, tensors)
    refused(path, "hyca", "digits")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_metadata_are_refused(path, constant):
    meta, tensors = parts(path)
    meta["hyca"] = meta["hyca"][:-1] + f', "x": {constant}' + "}"
    write(path, meta, tensors)
    refused(path, "hyca", "finite")


def test_a_flipped_header_byte_is_noticed(path):
    meta, tensors = parts(path)
    flipped = meta["hyca"].replace('"steps": 16', '"steps": 12')
    assert flipped != meta["hyca"]
    meta["hyca"] = flipped
    write(path, meta, tensors, fix_checksums=False)
    refused(path, "header_checksum", "does not match")


# -- tensors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["²", "٣", "３", "03", "-3", "3.0"])
def test_fit_tensors_named_by_anything_but_plain_digits_are_refused(path, suffix):
    meta, tensors = parts(path)
    scope = next(k.split("/")[1] for k in tensors)
    tensors[f"scopes/{scope}/fit/{suffix}"] = tensors.pop(f"scopes/{scope}/fit/3")
    write(path, meta, tensors)
    refused(path, f"scopes/{scope}/fit/{suffix}", "named by their interval")


def test_tensors_of_other_types_are_refused_before_use(path):
    meta, tensors = parts(path)
    name = next(k for k in tensors if k.endswith("/errors"))
    tensors[name] = tensors[name].double() * 1e300
    write(path, meta, tensors)
    refused(path, name, "tensor type must be one of")


# -- size ------------------------------------------------------------------------------------------
def test_a_file_far_larger_than_any_map_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # sparse: no disk or memory is spent on it
        f.write(struct.pack("<Q", 2))
        f.write(b"{}")
        f.truncate(MAX_FILE_BYTES + 1)
    refused(big, "file", "far above any solver map")


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1])
def test_truncations_are_refused_with_the_file_named(path, cut):
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    refused(path, "file", "not a readable safetensors file")


def test_a_header_that_declares_more_data_than_the_file_holds(path):
    data = bytearray(path.read_bytes())
    length = struct.unpack("<Q", data[:8])[0]
    data[:8] = struct.pack("<Q", length + 10 ** 12)
    path.write_bytes(bytes(data))
    refused(path, "file", "do not declare a header of at most 4 MiB")  # over the cap: said so, not "too long"
    data[:8] = struct.pack("<Q", len(data))  # within the cap, past the end
    path.write_bytes(bytes(data))
    refused(path, "file", "runs past the end of the file")


@pytest.mark.parametrize("field, value", [("blocks", 3), ("blocks", {"double": "2"}), ("features", 7),
                                          ("features", "single_blocks.0.total"), ("hidden_size", True)])
def test_what_describe_reads_of_the_architecture_is_validated(path, field, value):
    edit_header(path, lambda h: h["architecture"].update({field: value}))
    refused(path, f"architecture.{field}")


def test_errors_must_be_floats(path):
    meta, tensors = parts(path)
    name = next(k for k in tensors if k.endswith("/errors"))
    tensors[name] = tensors[name].to(torch.int32)
    write(path, meta, tensors)
    refused(path, name, "floating-point")


@pytest.mark.parametrize("weight", [1e6, -2e3])
def test_fitted_weights_that_sum_to_one_but_are_huge_are_refused(path, weight):
    meta, tensors = parts(path)
    name = next(k for k in tensors if "/fit/" in k)
    table = tensors[name].clone()
    table[..., 0], table[..., 1], table[..., 2] = weight, 1 - weight, 0.0
    tensors[name] = table
    write(path, meta, tensors)
    refused(path, name, "weights beyond")


def test_tensors_far_beyond_what_the_header_implies_are_refused_before_decoding(path):
    meta, tensors = parts(path)
    tensors["scopes/extra/errors"] = torch.zeros(4, 1024, 1024)  # 16 MiB in a 16-channel map
    header = json.loads(meta["hyca"])
    header["scopes"]["extra"] = {"features": []}
    meta["hyca"] = json.dumps(header)
    write(path, meta, tensors)
    refused(path, "file", "far more than")


# -- unclear errors found by hostile testing (issue 24, item 4) -------------------------------------
def test_a_lone_surrogate_in_the_header_is_refused_by_name(path):
    """JSON may escape a lone surrogate; no route, log or ``maps info`` could encode such text."""
    meta, tensors = parts(path)
    header = json.loads(meta["hyca"])
    meta["hyca"] = json.dumps(header).replace('"description": "', '"description": "\\udcff', 1)
    assert "\\udcff" in meta["hyca"]
    write(path, meta, tensors)
    error = refused(path, "hyca", "lone surrogate")
    str(error).encode("utf-8")  # the message itself is sendable


def test_a_huge_text_field_is_refused_without_echoing_it(path, tmp_path):
    edit_header(path, lambda h: h.update(family="x" * 500_000))
    error = refused(path, "family", "500000 characters long; at most 100")
    assert len(str(error)) < 500
    m = small_map()
    m.description = "d" * 4001  # what loading would refuse is never written
    with pytest.raises(SolverMapError, match="description: is 4001 characters long"):
        save_solver_map(m, str(tmp_path / "long.safetensors"))
    assert not (tmp_path / "long.safetensors").exists()


def test_a_file_that_is_no_map_is_refused_without_echoing_its_bytes(tmp_path):
    passwd = tmp_path / "passwd.safetensors"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    error = refused(passwd, "file", "first 8 bytes do not declare a header of at most 4 MiB")
    declared = str(int.from_bytes(b"root:x:0", "little"))
    assert declared not in str(error) and "root" not in str(error).replace(str(passwd), "")
    short = tmp_path / "short.safetensors"
    short.write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert "1000" not in str(refused(short, "file", "runs past the end of the file (10 bytes)"))
