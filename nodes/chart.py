"""The calibration picture HyCa Calibrate outputs as an IMAGE: per scope and cluster, every pool
solver's calibration error against the interval N, with the chosen solver ringed.

Drawn from the solver map alone (its ``errors`` and ``choices`` tensors), so any map can be
pictured. Pillow only (ComfyUI ships it); no ComfyUI import, so CI tests it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Tableau-like colours, distinct on white; one per pool solver, in pool order.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 0, 0)]
FIT_COLOUR = (60, 60, 60)
PANEL_W, PANEL_H = 380, 250
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 14, 28, 34
MAX_COLUMNS = 4  # clusters per row; more clusters (per-channel maps) are pooled into one panel
MAX_SCOPES = 12  # rows; the rest are counted in the header


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _panels(solver_map):
    """Per scope, its panels: (title, errors [rows, I] as numpy, labels of the rows, chosen row per
    interval). One row of the picture per scope, one column per cluster."""
    pool = list(solver_map.pool)
    for name, s in list(solver_map.scopes.items())[:MAX_SCOPES]:
        errors = s.errors.double()
        labels = pool + (["fit"] if errors.shape[0] > len(pool) else [])
        sizes = torch.bincount(s.labels.long(), minlength=s.clusters)
        if s.clusters <= MAX_COLUMNS:
            yield [(f"{name} · cluster {c} ({int(sizes[c])} ch)", errors[:, c, :].numpy(), labels,
                    [int(k) for k in s.choices[:, c]]) for c in range(s.clusters)]
        else:  # many clusters: channel-weighted mean per solver, and the hybrid of the choices
            w = sizes.double() / sizes.sum()
            mean = torch.einsum("sci,c->si", errors, w)
            hybrid = torch.stack([errors[s.choices[i].long(), torch.arange(s.clusters), i] @ w
                                  for i in range(len(solver_map.intervals))])
            title = f"{name} · {s.clusters} clusters, channel mean"
            rows = torch.cat([mean, hybrid[None]]).numpy()
            yield [(title, rows, labels + ["hybrid"], [rows.shape[0] - 1] * len(solver_map.intervals))]


def _draw_panel(draw, box, title, errors, labels, chosen, intervals, colours, fonts):
    x0, y0 = box
    left, top = x0 + MARGIN_L, y0 + MARGIN_T
    right, bottom = x0 + PANEL_W - MARGIN_R, y0 + PANEL_H - MARGIN_B
    draw.text((x0 + 8, y0 + 6), title, fill=(0, 0, 0), font=fonts["title"])
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    finite = errors[np.isfinite(errors) & (errors > 0)]
    if finite.size == 0:
        draw.text((left + 10, top + 10), "no finite errors", fill=(200, 0, 0), font=fonts["small"])
        return
    lo, hi = math.floor(np.log10(finite.min())), math.ceil(np.log10(finite.max()))
    hi = max(hi, lo + 1)
    n_lo, n_hi = intervals[0], max(intervals[-1], intervals[0] + 1)

    def at(n, e):
        x = left + (n - n_lo) / (n_hi - n_lo) * (right - left)
        v = np.log10(min(max(e, 10.0 ** lo), 10.0 ** hi))
        return x, bottom - (v - lo) / (hi - lo) * (bottom - top)

    for decade in range(lo, hi + 1):  # log grid, labelled every decade
        _, y = at(n_lo, 10.0 ** decade)
        draw.line([left, y, right, y], fill=(232, 232, 232))
        draw.text((x0 + 6, y - 6), f"1e{decade}", fill=(90, 90, 90), font=fonts["small"])
    for n in intervals:
        x, _ = at(n, 10.0 ** lo)
        draw.line([x, bottom, x, bottom + 4], fill=(120, 120, 120))
        draw.text((x - 4, bottom + 6), str(n), fill=(60, 60, 60), font=fonts["small"])
    draw.text((right - 60, bottom + 18), "interval N", fill=(90, 90, 90), font=fonts["small"])
    for row, label in enumerate(labels):
        colour = colours.get(label, FIT_COLOUR)
        points = [at(n, e) for n, e in zip(intervals, errors[row]) if np.isfinite(e) and e > 0]
        width = 3 if label == "hybrid" else 2
        if len(points) > 1:
            draw.line(points, fill=colour, width=width)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    for n, row, e in zip(intervals, chosen, errors[chosen, range(len(intervals))]):
        if np.isfinite(e) and e > 0:  # the chosen solver at each N: a black ring
            x, y = at(n, e)
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(0, 0, 0), width=2)


def calibration_chart(solver_map) -> torch.Tensor:
    """ComfyUI IMAGE: float32 [1, H, W, 3] in [0, 1]."""
    intervals = list(solver_map.intervals)
    scopes = list(_panels(solver_map))
    columns = max((len(panels) for panels in scopes), default=1)
    rows = len(scopes)
    header = 64
    width, height = columns * PANEL_W, header + max(rows, 1) * PANEL_H
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    fonts = {"title": _font(13), "small": _font(11), "header": _font(15)}
    labels = list(solver_map.pool) + ["fit", "hybrid"]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(solver_map.pool)}
    colours["hybrid"] = (0, 0, 0)

    hidden = len(solver_map.scopes) - MAX_SCOPES
    headline = (f"HyCa calibration: {solver_map.family}, {solver_map.granularity} granularity, "
                f"calibration error (MSE) per solver vs interval N; ring = chosen solver")
    if hidden > 0:
        headline += f"  (+{hidden} scopes not shown)"
    draw.text((8, 6), headline, fill=(0, 0, 0), font=fonts["header"])
    x = 8
    pooled = any(s.clusters > MAX_COLUMNS for s in solver_map.scopes.values())
    for name in labels:  # legend
        if (name == "fit" and not solver_map.has_fit) or (name == "hybrid" and not pooled):
            continue
        colour = colours.get(name, FIT_COLOUR)
        draw.line([x, 40, x + 18, 40], fill=colour, width=3)
        draw.text((x + 22, 33), name, fill=(0, 0, 0), font=fonts["small"])
        x += 30 + int(draw.textlength(name, font=fonts["small"]))
        if x > width - 80:
            break

    for r, panels in enumerate(scopes):
        for c, (title, errors, row_labels, chosen) in enumerate(panels):
            box = (c * PANEL_W, header + r * PANEL_H)
            _draw_panel(draw, box, title, errors, row_labels, chosen, intervals, colours, fonts)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return pixels[None]
