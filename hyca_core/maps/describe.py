"""What a map says to a person: the loader's details (``describe``), ``python -m hyca_core.maps
info`` (``summarize``) and the closed-loop check's record."""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..forecast.solvers import SOLVERS
from .format import FORMAT_NAME, SolverMap, placements

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
        "verified": verified(m), "verified_over": verified_baseline(m),
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


def verified_baseline(m: SolverMap) -> str:
    """The uniform solver the closed-loop gains are measured over: the record names it (the
    uncalibrated default when the map was calibrated); records that do not were measured over
    taylor1, the default then."""
    record = m.provenance.get("closed_loop")
    name = record.get("default") if isinstance(record, dict) else None
    return name if isinstance(name, str) and name in SOLVERS else "taylor1"


def verified_text(m: SolverMap, interval: int) -> Optional[str]:
    """One line on the closed-loop check at ``interval``, or None when the map has none for it."""
    entry = next((e for e in verified(m) if e["interval"] == interval), None)
    if entry is None:
        return None
    over = verified_baseline(m)
    if entry["kept"] == "map":
        return f"its solvers measured {entry['gain_db']:+.2f} dB over uniform {over} at N={interval} (held-out seeds)"
    return (f"at N={interval} its own solvers lost to uniform {entry['kept']} on held-out seeds, so it uses "
            f"{entry['kept']} there ({entry['gain_db']:+.2f} dB over {over})")


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
            for e in d["verified"]) + f" (over uniform {d['verified_over']}, held-out seeds)")
    for p in d["schedules"]:
        gain = f", {p['fit_db'] - p['fixed_db']:+.2f} dB over the best interval schedule" \
            if "fit_db" in p and "fixed_db" in p else ""
        lines.append(f"schedule     {p['budget']} full of {p['steps']} steps: {', '.join(map(str, p['full_steps']))}"
                     f" ({'uniform ' + p['solver'] if 'solver' in p else 'solvers of N=' + str(p['interval'])}"
                     f"{gain}, calibration seeds)")
    return "\n".join(lines)
