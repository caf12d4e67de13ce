"""Reading and writing map files. Reading never unpickles anything: tensors come from safetensors
and everything else is JSON in the file's metadata; the header is checked (layout, checksum,
sizes) before any tensor data is read, and every defect raises ``SolverMapError`` naming the file
and the field. Writing is atomic."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import Any, Optional

import torch

from ..forecast.solvers import MAX_ANCHORS
from .format import (FORMAT_NAME, FORMAT_VERSION, MAX_STEPS, ScopeAssignment, SolverMap, SolverMapError, _checksum, _header,
                     _tensors, _text_checksum)
from .validation import MAX_TEXT, _is_int, check_sizes, parse_json, validate_map

def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (read from /proc where
    it exists, since setting the umask to read it races with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_solver_map(m: SolverMap, path: str) -> None:
    """Write atomically: an interrupted save never leaves a half-written map behind."""
    from safetensors.torch import save_file

    validate_map(m, source="<solver map>")
    tensors = _tensors(m)
    header = json.dumps(_header(m), sort_keys=True, allow_nan=False)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(m.format_version),
        "hyca": header,
        "header_checksum": _text_checksum(header),
        "checksum": _checksum(tensors),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hyca-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 would hide the map from other users and servers
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

# A solver map is a few MB (FLUX, module granularity, C=2: about 1 MB; per-channel with fitted
# weights at intervals 2-20: tens of MB). Anything far larger is refused before it is read.
MAX_FILE_BYTES = 256 * 2 ** 20

MAX_HEADER_BYTES = 4 * 2 ** 20

MAX_HYCA_BYTES = 2 ** 20  # the ``hyca`` JSON: a map for 150 cached features writes about 20 KiB

MAX_TENSORS = 16384  # FLUX with one scope per feature and fits at 19 intervals: about 3,500

TENSOR_DTYPES = {"I32": 4, "I64": 8, "F32": 4}  # what save_solver_map writes (int32, float32) and int64


def load_solver_map(path: str, trust_header: bool = False) -> SolverMap:
    """Read and fully validate a map; any defect raises ``SolverMapError``. The file is read whole
    into memory and closed: the map owns its data, so replacing or truncating the file while the
    map is in use cannot change it or crash the process (a memory-mapped read could: SIGBUS).
    ``trust_header``: read a map whose header is unsigned or fails its checksum (``maps sign``
    only, for a file its user vouches for); everything else is still checked."""
    source = str(path)
    if not os.path.isfile(path):
        raise SolverMapError(source, "file", "no such file")
    metadata, header, tensors = _read_safetensors(path, source, trust_header)

    def need(key: str) -> str:
        if key not in metadata:
            raise SolverMapError(source, key, "missing from the file's metadata")
        return metadata[key]

    if need("format") != FORMAT_NAME:
        raise SolverMapError(source, "format", f"is {metadata['format'][:64]!r}, expected {FORMAT_NAME!r}")
    raw_version = need("format_version")
    if not (raw_version.isascii() and raw_version.isdecimal() and len(raw_version) <= 4):
        raise SolverMapError(source, "format_version", f"not an integer: {raw_version[:64]!r}")
    version = int(raw_version)
    if version > FORMAT_VERSION or version < 1:
        raise SolverMapError(source, "format_version", f"version {version} is not supported by this pack "
                                                       f"(reads 1..{FORMAT_VERSION}); update ComfyUI-HyCa")
    if header is None:
        need("hyca")
    if not isinstance(header, dict):
        raise SolverMapError(source, "hyca", "metadata is not a JSON object")
    if _checksum(tensors) != need("checksum"):
        raise SolverMapError(source, "checksum", "tensor data does not match the checksum: the file is corrupted")
    m = _from_parts(source, header, tensors, version)
    validate_map(m, source=source)
    return m


def _read_safetensors(path: str, source: str, trust_header: bool = False) -> tuple[dict[str, str], Any,
                                                                                     dict[str, torch.Tensor]]:
    """(metadata, the parsed ``hyca`` header or None, tensors) of a safetensors file. The header is
    read and checked first (layout, header checksum, and a data size no larger than the map's own
    architecture implies), the data only then, whole into memory; nothing returned shares memory
    with the file."""
    from safetensors.torch import load

    def unreadable(reason: str):
        raise SolverMapError(source, "file", f"not a readable safetensors file ({reason}); it may be truncated "
                                             "or not a solver map")

    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise SolverMapError(source, "file", f"{size / 2 ** 20:.0f} MiB is far above any solver map "
                                             f"(at most {MAX_FILE_BYTES >> 20} MiB): not a solver map")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            unreadable("shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES:  # never echo what the file holds: its first bytes may be anything
            unreadable(f"its first 8 bytes do not declare a header of at most {MAX_HEADER_BYTES >> 20} MiB")
        if 8 + length > size:
            unreadable(f"its declared header runs past the end of the file ({size} bytes)")
        header_bytes = f.read(length)
        metadata, end = _layout(source, header_bytes, unreadable)
        if 8 + length + end != size:
            unreadable(f"it holds {size - 8 - length} bytes of tensor data, its header declares {end}")
        header = _verified_header(source, metadata, trust_header)
        if isinstance(header, dict):
            check_sizes(source, header)  # before anything walks the header's lists
        implied = _implied_bytes(header)
        if implied is not None and end > implied:
            raise SolverMapError(source, "file", f"{end} bytes of tensors, far more than the {implied} its "
                                                 "architecture, intervals and pool need: not a solver map")
        data = head + header_bytes + f.read(end + 1)
    if len(data) != size:
        unreadable("the file changed while it was read")
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors' own checks, should ours have missed a defect
        unreadable(str(exc)[:200])
    del data  # one copy of the file at a time: the clones below are what the map keeps
    return metadata, header, {name: t.clone() for name, t in tensors.items()}  # owned, writable

SIGN_COMMAND = "python -m hyca_core.maps sign FILE"


def _verified_header(source: str, metadata: dict[str, str], trust_header: bool = False):
    """The ``hyca`` metadata, checked against its checksum and parsed; None when absent. The
    checksum is required: a map without it (or with the key renamed) could carry any edit."""
    text = metadata.get("hyca")
    if text is None:
        return None
    if len(text) > MAX_HYCA_BYTES:  # parsing and checking it takes time in proportion
        raise SolverMapError(source, "hyca", f"is {len(text) >> 10} KiB of JSON; a map's is at most "
                                             f"{MAX_HYCA_BYTES >> 10} KiB (calibration writes tens of KiB)")
    if not trust_header:
        if "header_checksum" not in metadata:
            raise SolverMapError(source, "header_checksum", "missing, so an edited or corrupted header could not be "
                                 "told apart (an older map, or the key was removed); if you trust this file, sign "
                                 f"it with `{SIGN_COMMAND}` in the pack's folder")
        if _text_checksum(text) != metadata["header_checksum"]:
            raise SolverMapError(source, "header_checksum", "the metadata does not match its checksum: the file is "
                                 f"corrupted or was edited (if you edited it yourself: `{SIGN_COMMAND}`)")
    return parse_json(source, "hyca", text)


def _layout(source: str, header_bytes: bytes, unreadable) -> tuple[dict[str, str], int]:
    """The safetensors header's metadata and the byte count its tensors declare, every entry
    checked: an allowed type, a shape that matches its bytes, contiguous offsets."""
    try:
        header_text = header_bytes.decode("utf-8")
    except UnicodeDecodeError:
        unreadable("its header is not UTF-8")
    layout = parse_json(source, "file header", header_text)
    if not isinstance(layout, dict):
        raise SolverMapError(source, "file header", "not a JSON object: not a safetensors file")
    if len(layout) > MAX_TENSORS + 1:
        raise SolverMapError(source, "file header", f"lists {len(layout)} tensors; a map holds at most {MAX_TENSORS}")
    metadata = layout.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SolverMapError(source, "file header", "__metadata__ must map names to strings")
    end = 0
    for name, entry in sorted(layout.items(), key=lambda kv: _offset(kv[1])):
        if not isinstance(entry, dict) or entry.get("dtype") not in TENSOR_DTYPES:
            raise SolverMapError(source, name[:200], f"tensor type must be one of {sorted(TENSOR_DTYPES)}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= 4 and all(_is_int(d) and 0 <= d for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise SolverMapError(source, name[:200], "malformed tensor entry in the file header")
        expected = TENSOR_DTYPES[entry["dtype"]] * math.prod(shape)
        if offsets[0] != end or offsets[1] - offsets[0] != expected:
            raise SolverMapError(source, name[:200], "tensor data does not match its shape and type, or overlaps")
        end = offsets[1]
    return metadata, end


def _implied_bytes(header) -> Optional[int]:
    """The most tensor bytes a map with this header's architecture, intervals, pool and scopes can
    hold (every tensor in 8-byte types, one cluster per channel, fitted weights at every interval),
    or None when the header cannot tell (it is refused later, naming the field)."""
    try:
        channels, intervals = header["architecture"]["hidden_size"], header["intervals"]
        pool, scopes = len(header["pool"]), len(header["scopes"])
        if not (_is_int(channels) and isinstance(intervals, list) and all(_is_int(n) for n in intervals)):
            return None
    except (KeyError, TypeError):
        return None
    i, fitted = len(intervals), sum(max(n, 0) for n in intervals) * MAX_ANCHORS
    schedules = header.get("provenance", {}).get("schedules", {}) if isinstance(header.get("provenance"), dict) else {}
    placed = sum(min(e["steps"], MAX_STEPS) for e in schedules.values() if isinstance(e, dict) and _is_int(
        e.get("steps")) and e["steps"] > 0) * MAX_ANCHORS if isinstance(schedules, dict) else 0
    per_scope = 8 * channels * (1 + i + (pool + 1) * i + fitted + placed)
    return scopes * per_scope + 4096


def _offset(entry) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return offsets[0] if isinstance(offsets, list) and offsets and _is_int(offsets[0]) else -1


def _from_parts(source: str, header: dict, tensors: dict[str, torch.Tensor], version: int) -> SolverMap:
    def get(key: str, kind, default: Any = ...):
        if key not in header:
            if default is not ...:
                return default
            raise SolverMapError(source, key, "missing")
        value = header[key]
        if not isinstance(value, kind):
            raise SolverMapError(source, key, f"has the wrong type ({type(value).__name__})")
        if isinstance(value, str) and len(value) > MAX_TEXT.get(key, len(value)):
            raise SolverMapError(source, key, f"is {len(value)} characters long; at most {MAX_TEXT[key]}")
        return value

    scopes_meta = get("scopes", dict)
    scopes = {}
    claimed = set()
    for name, meta in scopes_meta.items():
        prefix = f"scopes/{name}/"
        parts = {}
        for part in ("labels", "choices", "errors"):
            if prefix + part not in tensors:
                raise SolverMapError(source, prefix + part, "tensor missing")
            parts[part] = tensors[prefix + part]
            claimed.add(prefix + part)
        fitted, placed = {}, {}
        for key in tensors:
            for kind, found, by in (("fit/", fitted, "interval"), ("placed/", placed, "full-step budget")):
                if key.startswith(prefix + kind):
                    suffix = key[len(prefix + kind):]
                    # ASCII digits, no leading zero: "03", "٣" or "３" must not stand in for "3"
                    if re.fullmatch(r"[1-9][0-9]{0,3}", suffix) is None:
                        raise SolverMapError(source, key, f"{kind[:-1]} tensors must be named by their {by} "
                                                          "(ASCII digits, no leading zero)")
                    found[int(suffix)] = tensors[key]
                    claimed.add(key)
        if not isinstance(meta, dict):
            raise SolverMapError(source, f"scopes.{name}", "must be an object")
        features = meta.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise SolverMapError(source, f"scopes.{name}.features", "must be a list of feature names")
        scopes[name] = ScopeAssignment(parts["labels"], parts["choices"], parts["errors"], fitted, list(features),
                                       placed)
    stray = sorted(set(tensors) - claimed)
    if stray:
        raise SolverMapError(source, stray[0], "tensor belongs to no scope listed in the metadata")
    intervals = get("intervals", list)
    return SolverMap(
        family=get("family", str), architecture=get("architecture", dict), granularity=get("granularity", str),
        pool=tuple(get("pool", list)), intervals=tuple(intervals), warmup=get("warmup", int), scopes=scopes,
        mode=get("mode", str, "choose"), provenance=get("provenance", dict, {}), author=get("author", str, ""),
        description=get("description", str, ""), license=get("license", str, ""),
        pack_version=get("pack_version", str, ""), format_version=version, source=source,
    )
