"""Text inputs of the nodes, parsed without ComfyUI (so CI tests them): interval lists and
full-step budgets. Bounds are checked before any range is built: a workflow is shared input too,
and '2-1000000000' must not allocate a billion integers in the server."""

from __future__ import annotations

import re

MAX_INTERVAL = 20
_PART = re.compile(r"(\d{1,6})(?:-(\d{1,6}))?", re.ASCII)


def _ranges(text: str, what: str, example: str) -> list[tuple[int, int, str]]:
    out = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        found = _PART.fullmatch(part)
        if found is None:
            raise ValueError(f"{what}: cannot read {part[:40]!r}; write e.g. {example}")
        lo = int(found.group(1))
        out.append((lo, int(found.group(2) or lo), part))
    return out


def parse_intervals(text: str) -> tuple[int, ...]:
    """'2-8' or '3,4,6' or '2-4, 6' -> sorted distinct intervals, each in 2..20."""
    values = set()
    for lo, hi, part in _ranges(text, "intervals", "'2-8' or '3,4,6'"):
        if not 2 <= lo <= hi <= MAX_INTERVAL:
            raise ValueError(f"intervals must lie in 2..{MAX_INTERVAL}, got {part[:40]!r}")
        values.update(range(lo, hi + 1))
    if not values:
        raise ValueError(f"intervals must lie in 2..{MAX_INTERVAL}, got {text[:40]!r}")
    return tuple(sorted(values))


def parse_budgets(text: str, steps: int) -> tuple[int, ...]:
    """'8-12' or '10' or '' -> full-step budgets, each between 2 and the step count."""
    values = set()
    for lo, hi, part in _ranges(text, "full_step_budgets", "'8-12' or '10'"):
        if not 2 <= lo <= hi <= steps:
            raise ValueError(f"full_step_budgets must lie in 2..{steps} (the steps), got {part[:40]!r}")
        values.update(range(lo, hi + 1))
    return tuple(sorted(values))
