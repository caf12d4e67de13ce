"""Solver maps: which solver every channel of every cached feature uses, as a safetensors file.

The format is documented in ``solver_maps/README.md``. Reading never unpickles anything: tensors
come from safetensors and everything else is JSON in the file's metadata. Every defect found while
reading raises ``SolverMapError`` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from . import __version__
from .families import GRANULARITIES
from .predictor import FittedRule, HybridPredictor, PlacedRule, Rule
from .runtime import PredictorBank, pooled_scope
from .solvers import MAX_ANCHORS, SOLVERS

FORMAT_NAME = "hyca-solver-map"
FORMAT_VERSION = 1
MODES = ("choose", "fit")
_SUM_TOLERANCE = 1e-3
# Fitted weights measured on the reference model stay below 5 (C=2 and per-channel, 24 and 50
# steps); a weight of a thousand turns anchor noise into the forecast.
MAX_FIT_WEIGHT = 1000.0


class SolverMapError(ValueError):
    """A solver map file or object is unusable; says which file and which field."""

    def __init__(self, source: str, field_name: str, reason: str):
        self.source, self.field, self.reason = source, field_name, reason
        super().__init__(f"{source}: {field_name}: {reason}")


class SolverMapMismatch(ValueError):
    """A valid map made for another model than the one it is applied to."""


@dataclass
class ScopeAssignment:
    """Solvers of one feature scope (a feature kind pooled over blocks, or a single feature)."""

    labels: torch.Tensor  # int32 [D]: channel -> cluster
    choices: torch.Tensor  # int32 [I, C]: pool index per interval and cluster
    errors: torch.Tensor  # float32 [S (+1 if fitted), C, I]: calibration mean squared error
    # N -> float32 [C, N, MAX_ANCHORS] (maps written before history solvers: [C, N, 3])
    fitted: dict[int, torch.Tensor] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    # budget -> float32 [C, steps, MAX_ANCHORS]: step weights learned for that calibrated placement
    # (``provenance["schedules"][budget]``), one row per step (``hyca_core.placed``)
    placed: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.labels.numel()

    @property
    def clusters(self) -> int:
        return self.choices.shape[1]


@dataclass
class SolverMap:
    family: str
    architecture: dict  # {"hidden_size": int, "blocks": {kind: count}, "features": [names]}
    granularity: str
    pool: tuple[str, ...]
    intervals: tuple[int, ...]
    warmup: int
    scopes: dict[str, ScopeAssignment]
    mode: str = "choose"  # which rules ``predictors`` uses by default
    provenance: dict = field(default_factory=dict)  # steps, sampler, scheduler, runs, seeds, date, ...
    author: str = ""
    description: str = ""
    license: str = ""
    pack_version: str = __version__
    format_version: int = FORMAT_VERSION
    source: str = field(default="<solver map>", compare=False)  # file it was read from, for messages

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def from_calibration(cls, result, family: str, architecture: dict, granularity: str, warmup: int,
                         provenance: Optional[dict] = None, mode: Optional[str] = None, **text) -> "SolverMap":
        cfg = result.config
        prov = {
            "runs": result.runs, "steps": result.steps, "clusters": "per_channel" if cfg.per_channel else cfg.clusters,
            "descriptors": cfg.descriptors, "tokens": cfg.tokens, "scope": cfg.scope, "seed": cfg.seed,
        }
        prov["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        if getattr(result, "shrinkage", None):  # how much of each fit held on held-out data
            prov["fit_shrinkage"] = {scope: {str(n): keep for n, keep in by_n.items()}
                                     for scope, by_n in result.shrinkage.items()}
        prov.update(provenance or {})
        arch = dict(architecture)
        arch.setdefault("features", sorted(result.features))
        return cls(family=family, architecture=arch, granularity=granularity, pool=tuple(cfg.pool),
                   intervals=tuple(sorted(cfg.intervals)), warmup=int(warmup), scopes=dict(result.scopes),
                   mode=mode or ("fit" if cfg.fit else "choose"), provenance=prov, **text)

    @property
    def fingerprint(self) -> str:
        return architecture_fingerprint(self.architecture)

    @property
    def has_fit(self) -> bool:
        return all(scope.fitted for scope in self.scopes.values())

    # -- using -----------------------------------------------------------------------------------
    def predictors(self, interval: int, mode: Optional[str] = None, placement: Optional[int] = None) -> PredictorBank:
        """Predictors for deployment at ``interval``. An interval the map was not calibrated for
        uses the nearest calibrated one's solvers (they are exact for any spacing), never its
        fitted weights (those only hold at their own N). ``placement``: the budget of a calibrated
        placement being sampled; its learned step weights apply where the run is that placement."""
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        column = self.interval_column(interval)
        calibrated_n = self.intervals[column]
        banks = {}
        for name, scope in self.scopes.items():
            rules: list[Rule] = []
            entry = placements(self).get(placement) if placement is not None else None
            uniform = entry.get("solver") if entry is not None else None
            for c in range(scope.clusters):
                # a placement whose held-out check chose a uniform solver uses it everywhere
                fixed = uniform or self.pool[int(scope.choices[column, c])]
                table = (scope.fitted.get(interval) if mode == "fit" and calibrated_n == interval and uniform is None
                         else None)
                rule: Rule = fixed
                if table is not None:
                    rows = tuple(tuple(float(w) for w in row) for row in table[c].tolist())
                    rule = FittedRule(interval, rows, fixed)
                placed = scope.placed.get(placement) if placement is not None else None
                if placed is not None and entry is not None:
                    rows = tuple(tuple(float(w) for w in row) for row in placed[c].tolist())
                    rule = PlacedRule(entry["steps"], tuple(entry["full_steps"]), rows, rule)
                rules.append(rule)
            banks[name] = HybridPredictor(rules, scope.labels)
        return PredictorBank(banks)

    @property
    def has_placed(self) -> bool:
        return any(scope.placed for scope in self.scopes.values())

    def interval_column(self, interval: int) -> int:
        return min(range(len(self.intervals)), key=lambda i: (abs(self.intervals[i] - interval), self.intervals[i]))

    def check_model(self, family: str, architecture: dict) -> None:
        """Refuse a map made for another model, naming the file and what differs."""

        def refuse(field_name: str, text: str):
            raise SolverMapMismatch(f"{self.source}: {field_name}: {text}; calibrate a map for this model "
                                    "with HyCa Calibrate, or apply HyCa without a map")

        if family != self.family:
            refuse("family", f"the map is for model family {self.family!r}, the model is {family!r}")
        mine, theirs = self.architecture, architecture
        if mine.get("hidden_size") != theirs.get("hidden_size"):
            refuse("architecture.hidden_size", f"the map is for hidden size {mine.get('hidden_size')}, "
                                               f"the model has {theirs.get('hidden_size')}")
        if mine.get("blocks") != theirs.get("blocks"):
            refuse("architecture.blocks", f"the map is for blocks {mine.get('blocks')}, the model has {theirs.get('blocks')}")
        missing = [f for f in theirs.get("features", []) if f not in self.scopes and pooled_scope(f) not in self.scopes]
        if missing:
            refuse("scopes", f"the map ({self.granularity} granularity) has no solvers for {len(missing)} cached "
                             f"features of the model, e.g. {missing[0]!r}")

    def equals(self, other: "SolverMap") -> bool:
        """Bit-exact equality of every field and tensor."""
        if _header(self) != _header(other):
            return False
        a, b = _tensors(self), _tensors(other)
        return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def architecture_fingerprint(architecture: dict) -> str:
    canonical = json.dumps(architecture, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- file format ---------------------------------------------------------------------------------
def _header(m: SolverMap) -> dict:
    return {
        "family": m.family, "architecture": m.architecture, "fingerprint": m.fingerprint,
        "granularity": m.granularity, "pool": list(m.pool), "intervals": list(m.intervals), "warmup": m.warmup,
        "mode": m.mode, "provenance": m.provenance, "author": m.author, "description": m.description,
        "license": m.license, "pack_version": m.pack_version,
        "scopes": {name: {"features": list(s.features)} for name, s in m.scopes.items()},
    }


def _tensors(m: SolverMap) -> dict[str, torch.Tensor]:
    out = {}
    for name, scope in m.scopes.items():
        out[f"scopes/{name}/labels"] = scope.labels.to(torch.int32).contiguous()
        out[f"scopes/{name}/choices"] = scope.choices.to(torch.int32).contiguous()
        out[f"scopes/{name}/errors"] = scope.errors.to(torch.float32).contiguous()
        for n, table in scope.fitted.items():
            out[f"scopes/{name}/fit/{int(n)}"] = table.to(torch.float32).contiguous()
        for budget, table in scope.placed.items():
            out[f"scopes/{name}/placed/{int(budget)}"] = table.to(torch.float32).contiguous()
    return out


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _text_checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
MAX_JSON_DEPTH = 32  # the map's own JSON nests 5 deep; provenance is free JSON, kept shallow
MAX_INT_DIGITS = 30
# the longest text a map's header field may hold (a family name of a megabyte would be echoed in
# every mismatch message and route answer)
MAX_TEXT = {"family": 100, "granularity": 32, "mode": 32, "author": 200, "license": 200, "pack_version": 64,
            "description": 4000}
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


# What a sampler can use bounds every list a map holds (a valid map of 200,000 intervals once took
# the routes minutes): HyCa Apply and Calibrate stop at interval 20, 1000 steps and 16 clusters;
# FLUX at module granularity caches about 150 features.
MAX_INTERVAL = 100
MAX_LISTED = {"scopes": 1024, "intervals": 64, "pool": 64, "architecture.features": 4096,
              "architecture.blocks": 64, "provenance.schedules": 64}
MAX_NAME = 200  # characters of a scope's, a feature's or a block kind's name
MAX_PROVENANCE_BYTES = 256 * 2 ** 10  # Calibrate writes a few KiB


def check_sizes(source: str, header: dict) -> None:
    """Refuse a header whose lists or names exceed what any sampler or page can use, naming the
    field. Only sizes: types and values are checked by ``validate_map``."""

    def fail(field_name: str, reason: str):
        raise SolverMapError(source, field_name, reason)

    def at(path: str):
        node = header
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return node

    for path, limit in MAX_LISTED.items():
        value = at(path)
        if isinstance(value, (list, dict)) and len(value) > limit:
            fail(path, f"lists {len(value)} entries; a map holds at most {limit}")
    names = [("architecture.blocks", k) for k in at("architecture.blocks") or ()] if isinstance(
        at("architecture.blocks"), dict) else []
    for path in ("architecture.features",):
        names += [(path, f) for f in at(path) or () if isinstance(f, str)] if isinstance(at(path), list) else []
    scopes = at("scopes")
    for name, meta in scopes.items() if isinstance(scopes, dict) else ():
        names.append(("scopes", name))
        features = meta.get("features") if isinstance(meta, dict) else None
        if isinstance(features, list):
            if len(features) > MAX_LISTED["architecture.features"]:
                fail(f"scopes.{name[:MAX_NAME]}.features", f"lists {len(features)} entries; a map holds at most "
                                                           f"{MAX_LISTED['architecture.features']}")
            names += [(f"scopes.{name[:MAX_NAME]}.features", f) for f in features if isinstance(f, str)]
    for path, name in names:
        if len(name) > MAX_NAME:
            fail(path, f"holds a name {len(name)} characters long; at most {MAX_NAME}")
    provenance = header.get("provenance")
    if provenance is not None:
        size = len(json.dumps(provenance, ensure_ascii=False))
        if size > MAX_PROVENANCE_BYTES:
            fail("provenance", f"is {size >> 10} KiB of JSON; at most {MAX_PROVENANCE_BYTES >> 10} KiB (calibration "
                               "writes a few KiB)")


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


def _short(value, most: int = 40) -> str:
    """``repr`` of a value from a shared file, cut: a message never echoes a megabyte."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_json(source: str, field_name: str, text: str):
    """``json.loads`` for text from a shared file: no NaN or infinities (browsers refuse them), no
    integer of more than ``MAX_INT_DIGITS`` digits, no nesting deeper than ``MAX_JSON_DEPTH``; any
    defect raises ``SolverMapError``."""

    def integer(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_INT_DIGITS:
            raise ValueError(f"an integer of {len(digits)} digits")
        return int(digits)

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(f"{number[:32]} is not a finite number")
        return value

    def constant(name: str):
        raise ValueError(f"{name} is not a finite number")

    try:
        value = json.loads(text, parse_int=integer, parse_float=finite, parse_constant=constant)
    except RecursionError:
        raise SolverMapError(source, field_name, f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise SolverMapError(source, field_name, f"not valid JSON ({str(exc)[:200]})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise SolverMapError(source, field_name, f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:  # JSON may escape a lone surrogate (\udcff): no text that holds one can be shown or sent
        if _SURROGATE_ESCAPE.search(text):  # only an escape can make one: checking the value costs more
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise SolverMapError(source, field_name, "holds a lone surrogate escape (not valid Unicode text)") from None
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_depth(value) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


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


def validate_map(m: SolverMap, source: str = "<solver map>") -> None:
    """Check every field of a map; raise ``SolverMapError`` on the first defect."""

    def fail(field_name: str, reason: str):
        raise SolverMapError(source, field_name, reason)

    if not m.family:
        fail("family", "empty")
    for key, most in MAX_TEXT.items():  # what loading refuses is never written
        text = getattr(m, key)
        if isinstance(text, str) and len(text) > most:
            fail(key, f"is {len(text)} characters long; at most {most}")
    if not isinstance(m.architecture, dict):
        fail("architecture", "must be an object")
    check_sizes(source, _header(m))
    if m.granularity not in GRANULARITIES:
        fail("granularity", f"{m.granularity!r} is not one of {GRANULARITIES}")
    if m.mode not in MODES:
        fail("mode", f"{m.mode!r} is not one of {MODES}")
    if not m.pool:
        fail("pool", "empty")
    for name in m.pool:
        if not isinstance(name, str) or name not in SOLVERS:
            fail("pool", f"unknown solver {str(name)[:40]!r}; this pack knows {', '.join(SOLVERS)}")
    if not m.intervals or any(not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= MAX_INTERVAL
                              for n in m.intervals):
        fail("intervals", f"must be integers in 2..{MAX_INTERVAL}, got {_short(list(m.intervals), 200)}")
    if list(m.intervals) != sorted(set(m.intervals)):
        fail("intervals", f"must be sorted and distinct, got {list(m.intervals)}")
    if not isinstance(m.warmup, int) or m.warmup < 0:
        fail("warmup", f"must be an integer >= 0, got {_short(m.warmup)}")
    hidden = m.architecture.get("hidden_size")
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        fail("architecture.hidden_size", f"must be a positive integer, got {_short(hidden)}")
    # what check_model, describe and the loader's details read of the architecture
    blocks = m.architecture.get("blocks", {})
    if not isinstance(blocks, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in blocks.values()):
        fail("architecture.blocks", "must map block kinds to counts")
    features = m.architecture.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        fail("architecture.features", "must be a list of feature names")
    if not m.scopes:
        fail("scopes", "the map has no scopes")
    intervals, pool = len(m.intervals), len(m.pool)
    for name, s in m.scopes.items():
        at = f"scopes/{name}"
        if s.labels.dim() != 1 or s.labels.dtype not in (torch.int32, torch.int64):
            fail(f"{at}/labels", f"must be a 1-D integer tensor, got {s.labels.dtype} {list(s.labels.shape)}")
        if s.labels.numel() != hidden:
            fail(f"{at}/labels", f"has {s.labels.numel()} channels but architecture.hidden_size is {hidden}")
        if s.choices.dim() != 2 or s.choices.shape[0] != intervals or s.choices.dtype not in (torch.int32, torch.int64):
            fail(f"{at}/choices", f"must be an integer tensor [intervals={intervals}, clusters], got "
                                  f"{s.choices.dtype} {list(s.choices.shape)}")
        clusters = s.choices.shape[1]
        if clusters < 1:
            fail(f"{at}/choices", "no clusters")
        if int(s.labels.min()) < 0 or int(s.labels.max()) >= clusters:
            fail(f"{at}/labels", f"values must lie in [0, {clusters}) (clusters), got "
                                 f"[{int(s.labels.min())}, {int(s.labels.max())}]")
        if int(s.choices.min()) < 0 or int(s.choices.max()) >= pool:
            fail(f"{at}/choices", f"values must index the pool [0, {pool}), got "
                                  f"[{int(s.choices.min())}, {int(s.choices.max())}]")
        rows = pool + (1 if s.fitted else 0)
        if list(s.errors.shape) != [rows, clusters, intervals]:
            fail(f"{at}/errors", f"shape must be [{rows}, {clusters}, {intervals}], got {list(s.errors.shape)}")
        if not s.errors.is_floating_point():
            fail(f"{at}/errors", f"must be a floating-point tensor, got {s.errors.dtype}")
        if not bool(torch.isfinite(s.errors).all()) or bool((s.errors < 0).any()):
            fail(f"{at}/errors", "contains NaN, inf or negative errors")
        for n, table in s.fitted.items():
            where = f"{at}/fit/{n}"
            if n not in m.intervals:
                fail(where, f"interval {n} is not among the map's intervals {list(m.intervals)}")
            if table.ndim != 3 or list(table.shape[:2]) != [clusters, n] or table.shape[2] not in (3, MAX_ANCHORS):
                fail(where, f"shape must be [{clusters}, {n}, {MAX_ANCHORS}] (or [{clusters}, {n}, 3]), "
                            f"got {list(table.shape)}")
            if not bool(torch.isfinite(table).all()):
                fail(where, "contains NaN or inf")
            sums = table.double().sum(-1)
            if not bool(((sums - 1.0).abs() <= _SUM_TOLERANCE).all()):
                fail(where, "weights of each offset must sum to 1")
            if bool((table.abs() > MAX_FIT_WEIGHT).any()):
                fail(where, f"weights beyond +-{MAX_FIT_WEIGHT:g} (calibrated fits stay below 5): a forecast "
                            "with them amplifies the anchors' differences past any use")
        if s.fitted and set(s.fitted) != set(m.intervals):
            fail(f"{at}/fit", f"fitted weights cover intervals {sorted(s.fitted)}, the map lists {list(m.intervals)}")
        for budget, table in s.placed.items():
            where = f"{at}/placed/{budget}"
            entry = placements(m).get(budget)
            if entry is None:
                fail(where, f"learned weights for a placement of {budget} full steps the map does not hold "
                            "(provenance.schedules)")
            if list(table.shape) != [clusters, entry["steps"], MAX_ANCHORS]:
                fail(where, f"shape must be [{clusters}, {entry['steps']}, {MAX_ANCHORS}], got {list(table.shape)}")
            if not table.is_floating_point() or not bool(torch.isfinite(table).all()):
                fail(where, "must hold finite floating-point weights")
            if not bool(((table.double().sum(-1) - 1.0).abs() <= _SUM_TOLERANCE).all()):
                fail(where, "weights of each step must sum to 1")
            if bool((table.abs() > MAX_FIT_WEIGHT).any()):
                fail(where, f"weights beyond +-{MAX_FIT_WEIGHT:g}: a forecast with them amplifies the anchors' "
                            "differences past any use")
    if m.mode == "fit" and not m.has_fit:
        fail("mode", "is 'fit' but the map holds no fitted weights")


def uniform_predictors(solver: str) -> PredictorBank:
    """A bank using one solver for every channel of every feature (no map needed)."""
    return PredictorBank(default=HybridPredictor.uniform(solver))


PER_CHANNEL_LISTING = 16  # beyond this many clusters, solvers are listed as counts, not one by one


# the loader's panel lists this many scopes (FLUX at module granularity pools into 6); the rest are
# counted, so the route's answer stays a page's worth whatever the map holds
DESCRIBED_SCOPES = 48


def describe(m: SolverMap, scopes_listed: Optional[int] = DESCRIBED_SCOPES) -> dict:
    """Everything a person wants to know about a map, as plain JSON-ready data: what ``maps info``
    prints (every scope: ``scopes_listed=None``) and what the loader node shows. Per scope and
    interval: each cluster's solver, the hybrid's calibration error and the best single solver's,
    so a reader sees what clustering buys."""
    arch = m.architecture
    scopes = []
    for name, s in list(m.scopes.items())[:scopes_listed]:
        sizes = torch.bincount(s.labels.long(), minlength=s.clusters).tolist()
        listed = s.clusters <= PER_CHANNEL_LISTING
        weights = torch.tensor(sizes if listed else [1] * s.clusters, dtype=torch.float64)
        weights = weights / weights.sum()
        rows = []
        for i, n in enumerate(m.intervals):
            choice = s.choices[i].long()
            chosen = s.errors[choice, torch.arange(s.clusters), i].double()
            uniform = s.errors[: len(m.pool), :, i].double() @ weights
            best = int(uniform.argmin())
            row = {"interval": n, "mse": float(chosen @ weights),
                   "best_uniform": {"solver": m.pool[best], "mse": float(uniform[best])}}
            if listed:
                row["solvers"] = [m.pool[int(c)] for c in choice]
            else:
                counts = torch.bincount(choice, minlength=len(m.pool)).tolist()
                row["solver_counts"] = {m.pool[j]: c for j, c in enumerate(counts) if c}
            if s.fitted:
                row["fit_mse"] = float(s.errors[-1, :, i].double() @ weights)
            rows.append(row)
        scopes.append({"name": name, "channels": s.channels, "clusters": s.clusters,
                       "cluster_sizes": sizes if listed else None, "features": len(s.features), "intervals": rows})
    return {
        "format": f"{FORMAT_NAME} v{m.format_version}", "pack_version": m.pack_version,
        "family": m.family, "granularity": m.granularity, "mode": m.mode, "fitted": m.has_fit,
        "architecture": {"hidden_size": arch.get("hidden_size"), "blocks": dict(arch.get("blocks", {})),
                         "features": len(arch.get("features", [])), "fingerprint": m.fingerprint},
        "intervals": list(m.intervals), "warmup": m.warmup, "pool": list(m.pool),
        "author": m.author, "description": m.description, "license": m.license,
        "provenance": dict(m.provenance), "scopes": scopes, "scopes_not_listed": len(m.scopes) - len(scopes),
        "verified": verified(m),
        "schedules": list(placements(m).values()),
    }


def verified(m: SolverMap) -> list[dict]:
    """What the closed-loop check measured per interval (``provenance["closed_loop"]``, written by
    HyCa Calibrate with refine on): which solvers the map keeps at N ("map", or the uniform solver
    that beat it) and the gain in dB over the uniform default. Provenance is free JSON in a shared
    file, so anything malformed is left out rather than trusted."""
    record = m.provenance.get("closed_loop")
    entries = record.get("intervals") if isinstance(record, dict) else None
    if not isinstance(entries, dict):
        return []
    out = []
    for n in m.intervals:
        entry = entries.get(str(n))
        if not isinstance(entry, dict):
            continue
        gain, kept = entry.get("gain_db"), entry.get("kept")
        if not isinstance(gain, (int, float)) or isinstance(gain, bool) or not math.isfinite(gain):
            continue
        if not isinstance(kept, str) or (kept != "map" and kept not in SOLVERS):
            continue
        out.append({"interval": n, "kept": kept, "gain_db": round(float(gain), 2)})
    return out


MAX_STEPS = 10_000


def placements(m: SolverMap) -> dict[int, dict]:
    """The calibrated placements of full steps in the map (``provenance["schedules"]``), by budget;
    malformed entries (free JSON in a shared file) are left out."""
    found = m.provenance.get("schedules")
    if not isinstance(found, dict):
        return {}
    out = {}
    for key, entry in found.items():
        if not isinstance(key, str) or not key.isascii() or not key.isdecimal() or not isinstance(entry, dict):
            continue
        steps, full, n = entry.get("steps"), entry.get("full_steps"), entry.get("interval")
        if not (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_STEPS):
            continue
        if not (isinstance(n, int) and not isinstance(n, bool) and n in m.intervals):
            continue
        if not isinstance(full, list) or not full or len(full) > steps or any(
                not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < steps for i in full):
            continue
        if 0 not in full or len(set(full)) != len(full) or int(key) != len(full):
            continue
        clean = {"budget": len(full), "full_steps": sorted(full), "steps": steps, "interval": n}
        solver = entry.get("solver")
        if solver is not None:
            if not isinstance(solver, str) or solver not in m.pool:
                continue
            clean["solver"] = solver
        for field_name in ("fit_db", "fixed_db"):
            value = entry.get(field_name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                clean[field_name] = round(float(value), 2)
        out[len(full)] = clean
    return dict(sorted(out.items()))


def verified_text(m: SolverMap, interval: int) -> Optional[str]:
    """One line on the closed-loop check at ``interval``, or None when the map has none for it."""
    entry = next((e for e in verified(m) if e["interval"] == interval), None)
    if entry is None:
        return None
    if entry["kept"] == "map":
        return f"its solvers measured {entry['gain_db']:+.2f} dB over uniform taylor1 at N={interval} (held-out seeds)"
    return (f"at N={interval} its own solvers lost to uniform {entry['kept']} on held-out seeds, so it uses "
            f"{entry['kept']} there ({entry['gain_db']:+.2f} dB over taylor1)")


def summarize(m: SolverMap, source: str = "") -> str:
    """A human-readable description of a map (``python -m hyca_core.maps info``)."""
    d = describe(m, scopes_listed=None)
    arch = d["architecture"]
    lines = [f"file         {source}"] if source else []
    lines += [
        f"format       {d['format']} (written by ComfyUI-HyCa {d['pack_version'] or '?'})",
        f"family       {d['family']}",
        f"architecture hidden {arch['hidden_size']}, blocks {arch['blocks']}, "
        f"{arch['features']} cached features, fingerprint {arch['fingerprint']}",
        f"granularity  {d['granularity']}",
        f"mode         {d['mode']}{' (fitted weights included)' if d['fitted'] else ''}",
        f"intervals    {', '.join(map(str, d['intervals']))}   warm-up {d['warmup']}",
        f"pool         {', '.join(d['pool'])}",
    ]
    lines += [f"{key:<12} {d[key]}" for key in ("author", "description", "license") if d[key]]
    if d["provenance"]:
        lines.append("calibration  " + ", ".join(f"{k}={v}" for k, v in sorted(d["provenance"].items())))
    for s in d["scopes"]:
        sizes = s["cluster_sizes"]
        size_text = "clusters " + "/".join(map(str, sizes)) if sizes else f"{s['clusters']} clusters"
        lines.append(f"scope {s['name']}: {s['channels']} channels, {size_text}, {s['features']} features")
        for row in s["intervals"]:
            solvers = (" ".join(row["solvers"]) if "solvers" in row
                       else " ".join(f"{k}x{c}" for k, c in row["solver_counts"].items()))
            best = row["best_uniform"]
            text = f"  N={row['interval']}: {solvers}   mse {row['mse']:.3g} vs best uniform {best['solver']} {best['mse']:.3g}"
            if "fit_mse" in row:
                text += f", fit {row['fit_mse']:.3g}"
            lines.append(text)
    if d["verified"]:
        lines.append("closed loop   " + ", ".join(
            f"N={e['interval']} {'map' if e['kept'] == 'map' else 'uniform ' + e['kept']} {e['gain_db']:+.2f} dB"
            for e in d["verified"]) + " (over uniform taylor1, held-out seeds)")
    for p in d["schedules"]:
        gain = f", {p['fit_db'] - p['fixed_db']:+.2f} dB over the best interval schedule" \
            if "fit_db" in p and "fixed_db" in p else ""
        lines.append(f"schedule     {p['budget']} full of {p['steps']} steps: {', '.join(map(str, p['full_steps']))}"
                     f" ({'uniform ' + p['solver'] if 'solver' in p else 'solvers of N=' + str(p['interval'])}"
                     f"{gain}, calibration seeds)")
    return "\n".join(lines)


__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "GRANULARITIES", "MODES", "ScopeAssignment", "SolverMap",
    "SolverMapError", "SolverMapMismatch", "architecture_fingerprint", "describe", "load_solver_map",
    "save_solver_map", "summarize", "uniform_predictors", "validate_map", "verified", "verified_text", "placements",
]

