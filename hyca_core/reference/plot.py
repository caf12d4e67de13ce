"""Quality-vs-speedup curves from benchmark rows, drawn with matplotlib when it is installed.

    python -m hyca_core.reference.plot bench_out/results.json bench_out/quality-vs-speedup.png

matplotlib is an optional dependency (``pip install -e ".[bench]"``): the benchmark's numbers and
image grid need nothing beyond torch, and the plot is skipped with a note where it is missing.
"""

from __future__ import annotations

from collections import defaultdict

STYLE = {  # method -> (colour, marker, line style); HyCa solid and bold, baselines thinner
    "fewer steps": ("black", "s", "--"),
    "reuse": ("tab:gray", "o", ":"),
    "taylor1": ("tab:cyan", "v", ":"),
    "taylor2": ("tab:blue", "^", ":"),
    "foca": ("tab:olive", "D", ":"),
    "hermite": ("tab:purple", "P", ":"),
    "HyCa C=2": ("tab:red", "o", "-"),
    "HyCa C=4": ("tab:orange", "o", "-"),
    "HyCa fit": ("tab:brown", "*", "-"),
}
LABEL = {"taylor2": "TaylorSeer (taylor2)", "taylor1": "Taylor order 1", "reuse": "reuse (FORA)",
         "foca": "FoCa-style", "hermite": "HiCache-style"}


def plot_quality_vs_speedup(rows: list[dict], path: str, title: str = "") -> bool:
    """PSNR against FLOPs-bound and wall-clock speedup, one column per granularity. Returns False
    (after printing why) where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("quality-vs-speedup plot skipped: matplotlib is not installed (pip install -e \".[bench]\")")
        return False
    granularities = sorted({r["granularity"] for r in rows if r["granularity"] != "-"},
                           key=["module", "block", "stack"].index)
    curves = defaultdict(list)  # (method, granularity) -> rows by N
    for r in rows:
        if r["method"] != "uncached":
            curves[(r["method"], r["granularity"])].append(r)
    fig, axes = plt.subplots(2, len(granularities), figsize=(5.2 * len(granularities), 8.4), squeeze=False,
                             sharey=True)
    for column, granularity in enumerate(granularities):
        for row, (axis_key, axis_label) in enumerate((("flops_speedup", "FLOPs-bound speedup"),
                                                      ("wall_speedup", "wall-clock speedup (CPU)"))):
            ax = axes[row][column]
            for (method, g), points in sorted(curves.items(), key=lambda item: list(STYLE).index(item[0][0])
                                              if item[0][0] in STYLE else 99):
                if g not in (granularity, "-"):
                    continue
                points = sorted(points, key=lambda r: r["N"])
                colour, marker, line = STYLE.get(method, ("tab:green", "x", "-"))
                # wall-clock points are not ordered in speed (timing noise), so they are not joined
                ax.plot([p[axis_key] for p in points], [p["psnr"] for p in points], line if row == 0 else "",
                        color=colour, marker=marker, markersize=5, linewidth=2.2 if method.startswith("HyCa") else 1.3,
                        label=LABEL.get(method, method))
            ax.set_xlabel(axis_label)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{granularity} granularity")
            if column == 0:
                ax.set_ylabel("PSNR vs uncached (dB)")
    axes[0][0].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m hyca_core.reference.plot RESULTS_JSON OUT_PNG")
    with open(sys.argv[1]) as f:
        data = json.load(f)
    setting = data.get("setting", {})
    title = f"reference FLUX, {setting.get('steps')} steps, {setting.get('pairs')} held-out prompts"
    raise SystemExit(0 if plot_quality_vs_speedup(data["rows"], sys.argv[2], title=title) else 1)
