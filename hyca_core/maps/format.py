"""The solver map: which solver every channel of every cached feature uses, and how it is laid out
as a safetensors file (documented in ``solver_maps/README.md``): the dataclasses, the header and
tensors a file holds, their checksums, and the predictors a map makes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

import torch

from .._version import __version__
from ..forecast.predictor import FittedRule, HybridPredictor, PlacedRule, Rule
from ..forecast.stream import PredictorBank, pooled_scope

GRANULARITIES = ("module", "block", "stack", "final")  # what a map (and HyCa Apply) caches
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


def uniform_predictors(solver: str) -> PredictorBank:
    """A bank using one solver for every channel of every feature (no map needed)."""
    return PredictorBank(default=HybridPredictor.uniform(solver))

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
