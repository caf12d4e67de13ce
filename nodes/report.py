"""The run report: after every sampling run of a HyCa-patched model, what caching did, sent to the
browser as a ``hyca.report`` message for the HyCa Apply node that patched the model.

``build`` is plain Python (tested in CI); ``send`` hands the message to ComfyUI's server, only for
the client that queued the prompt, as ComfyUI does for its own ``executed`` messages.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timezone
from typing import Optional

from ..hyca_core.maps import verified_text

EVENT = "hyca.report"
PLAN_EVENT = "hyca.plan"  # before the first step: the anchors' estimate and what it decided
NODE_KEY = "hyca_report_node"  # transformer_options: id of the HyCa Apply node that gets the report
NOTES_KEY = "hyca_report_notes"  # transformer_options: what HyCa Apply found when patching
FORMAT = 1

log = logging.getLogger("hyca")


def build(node_id: str, state, rows: list[dict], status: str, prompt_id: Optional[str] = None,
          apply_notes=()) -> dict:
    """The message for one sampling run. ``rows`` are ``RunState.close()``'s, one per cond;
    ``apply_notes`` what HyCa Apply found when it patched the model (a map calibrated otherwise)."""
    config = getattr(state, "apply_config", state.config)  # auto-calibration: what the run was cached with
    schedule = config.schedule
    solver_map = config.solver_map
    conds = [{key: row[key] for key in ("cond", "full", "predicted", "recomputed", "resets", "flops_speedup",
                                        "peak_cache_bytes", "full_reasons", "timeline")} for row in rows]
    for c, row in zip(conds, rows):
        c["gates_ahead"], c["gates_on_step"] = row.get("gates_ahead", 0), dict(row.get("gates_on_step", {}))
    full = sum(c["full"] for c in conds)
    predicted = sum(c["predicted"] for c in conds)
    seconds = rows[0]["seconds"] if rows else 0.0
    return {
        "format": FORMAT, "node": str(node_id), "prompt_id": prompt_id, "status": status,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(float(seconds), 3),
        "full": full, "predicted": predicted,
        "flops_speedup": round((full + predicted) / full, 3) if full else 1.0,  # the FLOPs bound of the run
        "peak_cache_bytes": sum(c["peak_cache_bytes"] for c in conds),
        "interval": schedule.interval, "warmup": schedule.warmup, "cooldown": schedule.cooldown,
        "schedule": "spread" if schedule.spread is not None else "calibrated" if schedule.full_at is not None
        else "interval", "full_steps": schedule.spread or (len(schedule.full_at) if schedule.full_at else None),
        "granularity": config.granularity, "used_granularity": state.granularity,
        # the anchors' estimate made before the first step and the budget it was checked against
        "memory": _memory(getattr(state, "memory", None)),
        "map": os.path.basename(solver_map.source) if solver_map is not None else None,
        "solver": None if solver_map is not None else config.solver,
        "conds": conds,
        "notes": list(apply_notes) + list(state.notes) + _diagnoses(conds, schedule),
    }


def plan(node_id: str, state, prompt_id: Optional[str] = None, apply_notes=()) -> dict:
    """What a run decided about its anchors before its first step (``RunState.plan_memory``),
    shown on the HyCa Apply node while it samples; the run's report replaces it."""
    config = getattr(state, "apply_config", state.config)
    return {"format": FORMAT, "node": str(node_id), "prompt_id": prompt_id, "status": "sampling",
            "granularity": config.granularity, "used_granularity": state.granularity,
            "memory": _memory(state.memory), "notes": list(apply_notes) + list(state.notes)}


def announcer(node_id: str, apply_notes=()):
    """``RunState.announce`` for HyCa Apply's node: sends ``plan`` to the client that queued the prompt."""
    def announce(state) -> None:
        send(plan(node_id, state, current_prompt_id(), apply_notes), PLAN_EVENT)
    return announce


def _memory(memory) -> Optional[dict]:
    if not memory:
        return None
    keys = ("estimated_bytes", "budget_bytes", "budget", "granularity", "device", "exact")
    return {key: memory.get(key) for key in keys}


def map_notes(solver_map, interval: int, warmup: int, cooldown: int) -> list[str]:
    """Where HyCa Apply's schedule leaves what the map was calibrated for (logged when patching, and
    shown in every run report: quality can drop for these reasons)."""
    name = os.path.basename(solver_map.source)
    notes = []
    calibrated = (solver_map.warmup, solver_map.provenance.get("cooldown", cooldown))
    if calibrated != (warmup, cooldown):
        notes.append(f"{name} was calibrated for warmup_steps={calibrated[0]}, cooldown_steps={calibrated[1]}; "
                     f"this node uses {warmup} and {cooldown}, so its solvers were scored on other anchor spacings")
    checked = verified_text(solver_map, interval) if interval > 1 else None
    if checked:
        notes.append(f"{name}: {checked}")
    if interval > 1 and interval not in solver_map.intervals:
        nearest = solver_map.intervals[solver_map.interval_column(interval)]
        notes.append(f"{name} has no solvers for interval {interval}: using those chosen for N={nearest} "
                     f"(calibrated: {', '.join(map(str, solver_map.intervals))})")
    return notes


def _diagnoses(conds: list[dict], schedule) -> list[str]:
    """What a user would otherwise dig out of the console: why steps were not forecast."""
    notes = []
    for c in conds:
        if c["recomputed"]:
            notes.append(f"{c['cond']}: {c['recomputed']} forecast step(s) gave NaN/inf and were computed fully")
        if c["resets"]:
            notes.append(f"{c['cond']}: the input changed shape, dtype or device {c['resets']} time(s); "
                         "caching restarted each time")
        if c["gates_on_step"]:
            why = "; ".join(f"{reason} ({n})" for reason, n in sorted(c["gates_on_step"].items()))
            notes.append(f"{c['cond']}: {sum(c['gates_on_step'].values())} forecast step(s) ran the blocks' modulation "
                         f"themselves instead of using gates computed ahead: {why}. Same images; slower where "
                         "ComfyUI streams the weights")
        if c["full"] and not c["predicted"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["full_reasons"].items()))
            if schedule.spread is not None:
                notes.append(f"{c['cond']}: no step was forecast ({reasons}): full_steps ({schedule.spread}) is not "
                             "below the steps sampled; lower full_steps or raise the steps")
            else:
                notes.append(f"{c['cond']}: no step was forecast ({reasons}): raise the steps, or lower interval "
                             f"({schedule.interval}), warmup_steps ({schedule.warmup}) or cooldown_steps "
                             f"({schedule.cooldown}), or widen start/end_percent")
    return notes


def publish(node_id: str, state, rows: list[dict], status: str, apply_notes=()) -> None:
    """Build and send one run's report; a defect here is logged, never raised into the run."""
    try:
        send(build(node_id, state, rows, status, current_prompt_id(), apply_notes))
    except Exception as exc:  # noqa: BLE001
        log.warning("HyCa: could not build the run report: %s", exc)


def running_server():
    """ComfyUI's PromptServer if this process runs one (main.py imports ``server`` before loading
    the nodes); None in scripts and tests, where importing it ourselves would start nothing."""
    module = sys.modules.get("server")
    return getattr(getattr(module, "PromptServer", None), "instance", None)


def send(message: dict, event: str = EVENT) -> None:
    """To the client that queued the running prompt; never raises (a report must not fail a run)."""
    server = running_server()
    if server is None or getattr(server, "client_id", None) is None:
        return  # no browser to show it to: the log line is the report
    try:
        server.send_sync(event, message, server.client_id)
    except Exception as exc:  # noqa: BLE001
        log.warning("HyCa: could not send the run report to the browser: %s", exc)


def current_prompt_id() -> Optional[str]:
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        return context.prompt_id if context is not None else None
    except Exception:  # noqa: BLE001  (an older ComfyUI without execution contexts)
        return None
