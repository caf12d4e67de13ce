"""Validation of a solver map from a shared file: bounded JSON, sizes no sampler needs refused, and
every field and tensor checked; any defect raises ``SolverMapError`` naming the field."""

from __future__ import annotations

import json
import math
import re

import torch

from ..forecast.solvers import MAX_ANCHORS, SOLVERS
from .format import (_SUM_TOLERANCE, GRANULARITIES, MAX_FIT_WEIGHT, MODES, SolverMap, SolverMapError, _header,
                     placements)

MAX_JSON_DEPTH = 32  # the map's own JSON nests 5 deep; provenance is free JSON, kept shallow

MAX_INT_DIGITS = 30

# the longest text a map's header field may hold (a family name of a megabyte would be echoed in
# every mismatch message and route answer)
MAX_TEXT = {"family": 100, "granularity": 32, "mode": 32, "author": 200, "license": 200, "pack_version": 64,
            "description": 4000}

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
