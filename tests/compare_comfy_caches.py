"""HyCa Apply against ComfyUI's own EasyCache and LazyCache and the Spectrum pack, inside a real ComfyUI.

    COMFYUI_PATH=/path/to/ComfyUI python tests/compare_comfy_caches.py            # 50 steps, 16 pairs, 3 repeats
    COMFYUI_PATH=/path/to/ComfyUI python tests/compare_comfy_caches.py --quick    # a small smoke run
    COMFYUI_PATH=... python tests/compare_comfy_caches.py --model wan --cfg 4 --steps 20 \
        --spectrum /path/to/ComfyUI-Spectrum --frontier                           # issue 22's frontier

A bundled reference model is loaded into ComfyUI's own class (FLUX: ``Flux``; Wan: ``WanModel``
through ComfyUI's own checkpoint detection) and sampled with ``comfy.sample.sample`` (Euler,
simple scheduler, CFG 3 unless ``--cfg``), so every cache runs through the same ComfyUI code paths
a workflow uses. ``--spectrum`` names a checkout of the public ``judian17/ComfyUI-Spectrum`` pack
(MIT; run read-only from its folder, never copied here): its node is swept over its knobs.
``--frontier`` adds HyCa's spread schedule and writes, per method, the best PSNR at or below each
share of full evaluations (``hyca_core.reference.frontier``). EasyCache and LazyCache decide at run time how many
steps to skip, so their ``reuse_threshold`` is swept (in the nodes' default window and in HyCa's)
and each setting's actual number of full evaluations is reported: compare methods at equal full
evaluations. Two EasyCache issues of this ComfyUI snapshot are worked around without touching its
code (see ``guard_input`` and ``easycache_handles_batched_cfg``).

Full evaluations are counted with a forward hook on the first block's query projection, which
runs only when the transformer really computes (EasyCache and LazyCache skip the whole model,
Spectrum and HyCa skip every block's attention). Quality is PSNR / SSIM of the decoded
images against the uncached ComfyUI output; wall time is the median of repeats in this process.
The held-out prompts (the model kind's prompts of seed 777) are never seen by the calibration
(seeds 4242 + s).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # comfy_env / support, and the repository (run as a script)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from comfy_env import comfyui_path, detected_config, require_comfyui  # noqa: E402

SEED = 90_000  # evaluation noise, as hyca_core.reference.benchmark
CALIBRATION_SEED = 50_000
CFG = 3.0
WARMUP = 3
INTERVALS = (3, 4, 5, 6)
# up to the nodes' maximum (3.0): EasyCache / LazyCache's counts then span HyCa's at 50 steps
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0)
# the nodes' default window where EasyCache / LazyCache may skip; it forces the first 15% and the
# last 5% of steps full, too many to reach HyCa's counts at N >= 5, so each threshold also runs
# in HyCa's own window (skipping allowed from the end of warm-up to the last step)
NODE_WINDOW = (0.15, 0.95)


def load_modules():
    """Import ComfyUI and this pack as ComfyUI would (``comfyui_hyca``); every hyca class passed to
    the nodes must come from the pack, not from a second import of ``hyca_core``."""
    require_comfyui()
    from support import load_pack

    load_pack()
    names = {
        "sample": "comfy.sample", "samplers": "comfy.samplers", "patcher": "comfy.model_patcher",
        "easycache": "comfy_extras.nodes_easycache",
        "apply": "comfyui_hyca.nodes.apply", "patch": "comfyui_hyca.nodes.patch",
        "families": "comfyui_hyca.hyca_core.model.families", "procedure": "comfyui_hyca.hyca_core.calibrate.procedure",
        "session": "comfyui_hyca.hyca_core.model.session",
        "metrics": "comfyui_hyca.hyca_core.reference.metrics", "data": "comfyui_hyca.hyca_core.reference.data",
        "pipeline": "comfyui_hyca.hyca_core.reference.pipeline", "wan": "comfyui_hyca.hyca_core.reference.wan",
        "frontier": "comfyui_hyca.hyca_core.reference.frontier", "sd": "comfy.sd",
    }
    return argparse.Namespace(**{k: importlib.import_module(v) for k, v in names.items()})


def comfy_model(m, reference):
    """ComfyUI's own model class with the reference weights (FLUX: built from its config; Wan:
    through ComfyUI's checkpoint detection, as a file in models/diffusion_models would load)."""
    if m.pipeline.kind_of(reference).name == "wan":
        patcher = m.sd.load_diffusion_model_state_dict(m.wan.comfy_state_dict(reference),
                                                       model_options={"dtype": torch.float32})
        base = patcher.model
        # the reference model was trained on raw latents: make process_in/out the identity
        base.latent_format.latents_mean = torch.zeros_like(base.latent_format.latents_mean)
        base.latent_format.latents_std = torch.ones_like(base.latent_format.latents_std)
        base.model_sampling.set_parameters(shift=m.pipeline.WAN_SHIFT)
        return patcher
    supported = detected_config("flux", reference.config.comfy_unet_config())
    supported.set_inference_dtype(torch.float32, None)
    model = supported.get_model({})
    # through the model's own key conversion, as a checkpoint loads (0.26 renames the RMSNorm scales)
    model.diffusion_model.load_state_dict(supported.process_unet_state_dict(dict(reference.state_dict())), strict=True)
    # the reference model was trained on raw latents: make process_in/out the identity
    model.latent_format.scale_factor, model.latent_format.shift_factor = 1.0, 0.0
    if model.model_sampling.shift != m.pipeline.SHIFT:
        model.model_sampling.set_parameters(shift=m.pipeline.SHIFT)
    cpu = torch.device("cpu")
    return m.patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


class FullEvalCounter:
    """Counts calls of a module that only fully computed evaluations run: the first block's query
    projection (every cache here skips at least every block's attention on a forecast)."""

    def __init__(self, diffusion_model):
        self.calls = 0
        blocks = getattr(diffusion_model, "double_blocks", None)
        module = blocks[0].img_attn.qkv if blocks is not None else diffusion_model.blocks[0].self_attn.q
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


class Prompts:
    """A batch of prompts with its conditioning and the reference pipeline's noise (seed + index)."""

    def __init__(self, m, kind, prompts, seed):
        encoder = kind.encoder()
        context, pooled = encoder(prompts)
        empty_context, empty_pooled = encoder([""] * len(prompts))
        self.noise = m.pipeline.initial_noise(len(prompts), seed)
        if kind.frames:  # Wan: video latents of one frame, the text widened to ComfyUI's 4096 channels
            self.noise = self.noise.unsqueeze(2)
            self.positive = [[m.wan.pad_context(context), {}]]
            self.negative = [[m.wan.pad_context(empty_context), {}]]
            return
        # no "guidance": the reference weights have no guidance embedding
        self.positive = [[context, {"pooled_output": pooled}]]
        self.negative = [[empty_context, {"pooled_output": empty_pooled}]]


def sample(m, model, batch: Prompts, steps: int) -> torch.Tensor:
    return m.sample.sample(model, batch.noise, steps, CFG, "euler", "simple", batch.positive, batch.negative,
                           torch.zeros_like(batch.noise), seed=0, disable_pbar=True)


def calibration_runner(m, kind, model, steps: int):
    """``run(seed, config)`` for ``hyca_core.calibrate.procedure`` through ComfyUI's sampler: seed ``s`` samples
    its own 8 prompts (the kind's prompts of seed 4242 + s) from its own noise, as the reference
    benchmark's runner does; the held-out prompts (seed 777) are never among them."""

    def run(seed, config):
        patched = model
        if config is not None:
            patched = model.clone()
            m.patch.install(patched, config)
        prompts = kind.prompts(4242 + seed, 8)
        return sample(m, patched, Prompts(m, kind, prompts, CALIBRATION_SEED + 100 * seed), steps)

    return run


def calibrate(m, kind, model, steps: int, intervals, runs: int, cooldown: int, refine: str = "fast", budgets=(),
              granularity: str = "module"):
    """A HyCa map (C=2, the paper's "choose" mode) through the pack's own calibration procedure, as
    HyCa Calibrate runs it (without writing a file): open-loop choice, closed-loop ``refine`` and
    check, and a calibrated placement per full-step budget with the step weights learned for it.
    The closed loop scores decoded images, as HyCa Calibrate does when the workflow gives a VAE."""
    diffusion_model = model.model.diffusion_model
    family = m.families.detect(diffusion_model)
    procedure = m.procedure.Procedure(steps=steps, warmup=WARMUP, cooldown=cooldown, intervals=tuple(intervals),
                                      clusters=2, refine=refine, runs=runs, budgets=tuple(budgets))
    outcome = m.procedure.calibrate(calibration_runner(m, kind, model, steps), diffusion_model, family, granularity,
                                    procedure, provenance={"sampler": "euler", "scheduler": "simple", "cfg": CFG},
                                    decode=m.data.decode)
    return outcome


def hyca(m, model, interval, cooldown, solver_map=None, full_steps=None, granularity="module", schedule=None):
    """HyCa Apply: an interval schedule, the spread schedule of ``full_steps`` full steps
    (``schedule="spread"``), or the map's calibrated placement of ``full_steps`` full steps."""
    if schedule is None:
        schedule = "interval" if full_steps is None else "calibrated"
    return m.apply.HyCaApply.execute(model, interval, WARMUP, cooldown, 0.0, 1.0, granularity, "auto", True,
                                     solver_map=solver_map, schedule=schedule,
                                     full_steps=full_steps or 1).result[0]


SPECTRUM_GRID = {  # the Spectrum node's knobs (its initial w is replaced on every forecast: not swept)
    "M": (3, 4, 6), "lam": (0.1, 1.0), "warmup_steps": (1, 2, 3), "window_size": (2.0, 3.0, 4.0),
    "flex_window": (0.5, 1.0, 2.0, 3.0), "max_w": (0.5, 0.8, 1.0),
}
# for long runs: the full grid less knob values that were (almost) never best in the lab's sweep of
# Spectrum's clean-room twin (both reference models, 20 and 50 steps, 28 budgets): warm-up 2 never,
# max_w below 1 once (FLUX, 50 steps, 13 full)
SPECTRUM_SMALL = {**SPECTRUM_GRID, "warmup_steps": (1, 3), "max_w": (1.0,)}
SPECTRUM_QUICK = {"M": (4,), "lam": (0.1,), "warmup_steps": (1, 3), "window_size": (2.0,), "flex_window": (0.75, 3.0),
                  "max_w": (0.8,)}


def spectrum_node(path: str):
    """The public Spectrum pack's node class, imported from its own folder (read-only, not copied)."""
    spec = importlib.util.spec_from_file_location("comfyui_spectrum_peer", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    with contextlib.redirect_stdout(None):
        spec.loader.exec_module(module)
    return module.SpectrumNode


def spectrum_settings(quick: bool, size: str = "full"):
    grid = SPECTRUM_QUICK if quick else SPECTRUM_SMALL if size == "small" else SPECTRUM_GRID
    for values in itertools.product(*grid.values()):
        yield dict(zip(grid, values))


def easycache_handles_batched_cfg(m) -> bool:
    """Whether this ComfyUI's EasyCache restores each cond's cache when cond and uncond share a
    call. Some releases add every cond's cached difference to the whole batch (an error when the
    batch is > 1, wrong outputs when it is 1; ComfyUI issue #10344, fixed upstream)."""
    holder = m.easycache.EasyCacheHolder(0.2, 0.0, 1.0, subsample_factor=8, offload_cache_diff=False)
    x, out = torch.zeros(2, 1, 1, 1), torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    holder.update_cache_diff(out, x, ["cond", "uncond"])
    try:
        return torch.equal(holder.apply_cache_diff(x.clone(), ["cond", "uncond"]), out)
    except RuntimeError:
        return False


def fresh_input_wrapper(executor, x, *args, **kwargs):
    return executor(x.clone(), *args, **kwargs)


def guard_input(model):
    """A clone whose diffusion model gets a copy of its input. EasyCache adds its cached
    difference to the input in place; with fp32 weights (no cast, so no copy, before the diffusion
    model) that input is the very tensor ComfyUI then computes the denoised output from, and every
    skipped step comes out wrong. A bf16/fp16 model's cast makes this copy anyway. Added before
    EasyCache's own wrapper, so it runs outside it."""
    import comfy.patcher_extension

    guarded = model.clone()
    guarded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "input-copy", fresh_input_wrapper)
    return guarded


@contextlib.contextmanager
def split_cond_and_uncond(model):
    """Make ComfyUI run cond and uncond in separate calls, as it does when memory is short."""
    base = model.model
    base.memory_required = lambda *a, **k: 1e30
    try:
        yield
    finally:
        del base.memory_required  # back to the class's method


def comfyui_version(path: str) -> str:
    try:
        commit = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            return f"commit {commit.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import comfyui_version

        return f"version {comfyui_version.__version__} (no git metadata)"
    except ImportError:
        return "unknown version (no git metadata)"


def sanity_check(m, kind, reference, model, prompts, size, steps, uncached) -> dict:
    """Same weights, same noise: ComfyUI's schedule and output against the pure-PyTorch pipeline's."""
    sigmas = m.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    pipeline_out = torch.cat([m.pipeline.sample(reference, prompts[i:i + size], seed=SEED + i, steps=steps, cfg=CFG)
                              for i in range(0, len(prompts), size)])
    images = m.data.decode(pipeline_out), m.data.decode(uncached)
    result = {"sigma_gap": float((sigmas.float() - kind.sigmas(steps)).abs().max()),
              "pipeline_psnr": float(m.metrics.psnr(*images).clamp_max(99).mean()),
              "latent_gap": float((pipeline_out - uncached).abs().max())}
    print(f"sanity: max |ComfyUI simple sigmas - the reference schedule| = {result['sigma_gap']:.2e}; reference "
          f"pipeline vs ComfyUI uncached: PSNR {result['pipeline_psnr']:.2f} dB, max |latent diff| "
          f"{result['latent_gap']:.2e}")
    return result


class Bench:
    """Timed sampling runs on the held-out prompts, and the table rows."""

    def __init__(self, m, model, batches, steps, repeats):
        self.m, self.model, self.batches, self.steps, self.repeats = m, model, batches, steps, repeats
        self.counter = FullEvalCounter(model.model.diffusion_model)
        self.rows = []
        self.reference_images = None

    def run(self, patched):
        return torch.cat([sample(self.m, patched, b, self.steps) for b in self.batches])

    def measure(self, patched):
        """-> (latents of the last run, median seconds, counted calls per sampling run)."""
        times, out = [], None
        self.counter.calls = 0
        for _ in range(self.repeats):
            started = time.perf_counter()
            out = self.run(patched)
            times.append(time.perf_counter() - started)
        return out, statistics.median(times), self.counter.calls / (self.repeats * len(self.batches))

    def baseline(self, patched):
        """An uncached run: its time is the wall-clock baseline, and its calls per step tell how
        many calls one full evaluation is (1 with cond and uncond batched, 2 when split)."""
        latents, seconds, calls = self.measure(patched)
        return {"latents": latents, "seconds": seconds, "calls_per_eval": calls / self.steps}

    def record(self, method, setting, latents, seconds, calls, baseline, n=None):
        images = self.m.data.decode(latents)
        full = calls / baseline["calls_per_eval"]
        row = {
            "method": method, "setting": setting, "N": n, "full": full, "flops_speedup": self.steps / full,
            "wall_s": seconds, "wall_speedup": baseline["seconds"] / seconds,
            "psnr": float(self.m.metrics.psnr(images, self.reference_images).clamp_max(99).mean()),
            "ssim": float(self.m.metrics.ssim(images, self.reference_images).mean()),
        }
        self.rows.append(row)
        print(f"{method:<18} {setting:<32} full={full:>5.1f} flops {row['flops_speedup']:.2f}x "
              f"wall {row['wall_speedup']:.2f}x ({seconds:.2f} s) psnr {row['psnr']:.2f} ssim {row['ssim']:.3f}",
              flush=True)


def main(argv=None) -> int:
    global CFG
    parser = argparse.ArgumentParser(prog="tests/compare_comfy_caches.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("flux", "wan"), default="flux", help="reference model (default flux)")
    parser.add_argument("--cfg", type=float, default=CFG, help=f"guidance scale (default {CFG:g})")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    parser.add_argument("--pairs", type=int, default=16, help="held-out prompts (default 16)")
    parser.add_argument("--batch", type=int, help="prompts per sampling run (default: all pairs in one batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported (default 3)")
    parser.add_argument("--intervals", type=int, nargs="+", default=list(INTERVALS), help="HyCa intervals N")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                        help="EasyCache / LazyCache reuse_threshold sweep")
    parser.add_argument("--calibration-runs", type=int, default=2, help="calibration runs of 8 prompts (default 2)")
    parser.add_argument("--refine", choices=("off", "fast", "thorough"), default="fast",
                        help="HyCa Calibrate's refine level for the map (default fast, the node's default)")
    parser.add_argument("--budgets", type=int, nargs="*",
                        help="full-step budgets to calibrate a placement for and sample with schedule=calibrated "
                             "and spread (default 12 13; with --frontier the frontier's budgets)")
    parser.add_argument("--cooldown", type=int, default=1,
                        help="HyCa's full last steps, in calibration and deployment (default 1, HyCa Apply's default)")
    parser.add_argument("--granularities", nargs="+", default=["module"], help="HyCa granularities (default module)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="HyCa without a map only (no calibration runs): the interval and, with --frontier, "
                             "the spread schedule")
    parser.add_argument("--spectrum-grid", choices=("full", "small"), default="full",
                        help="the Spectrum knobs swept: full (648 settings) or small (144: less values (almost) "
                             "never best in the lab's sweep of its clean-room twin, for long runs)")
    parser.add_argument("--spectrum", help="a checkout of github:judian17/ComfyUI-Spectrum: sweep its node too")
    parser.add_argument("--no-easycache", action="store_true", help="leave out EasyCache and LazyCache")
    parser.add_argument("--frontier", action="store_true",
                        help="write frontier.md: per method, the best PSNR at or below each share of full evaluations")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 steps, 4 pairs, 1 repeat, N 3 6, thresholds 0.1 0.5 2, 1 calibration run")
    parser.add_argument("--out", default="compare_out", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    CFG = args.cfg
    if args.quick:
        args.steps, args.pairs, args.repeats, args.calibration_runs = 20, 4, 1, 1
        args.intervals, args.thresholds, args.budgets = [3, 6], [0.1, 0.5, 2.0], [6]
    path = comfyui_path()
    if path is None:
        print("no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout", file=sys.stderr)
        return 2
    try:
        m = load_modules()
    except pytest.skip.Exception as reason:  # require_comfyui's verdict, outside pytest
        print(reason, file=sys.stderr)
        return 2
    if args.budgets is None:
        args.budgets = m.frontier.budgets(args.steps) if args.frontier else [12, 13]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ComfyUI at {path}, {comfyui_version(path)}")
    kind = m.pipeline.KINDS[args.model]
    reference = m.pipeline.load_reference(args.model)
    model = comfy_model(m, reference)
    prompts = kind.prompts(777, args.pairs)  # never used in calibration
    size = args.batch or len(prompts)
    bench = Bench(m, model, [Prompts(m, kind, prompts[i:i + size], SEED + i) for i in range(0, len(prompts), size)],
                  args.steps, args.repeats)

    sample(m, model, bench.batches[0], 2)  # untimed: first-call overheads (model load, kernels at these shapes)
    uncached = bench.baseline(model)
    bench.reference_images = m.data.decode(uncached["latents"])
    print(f"calls of the counted module per evaluation: {uncached['calls_per_eval']:g}")

    sanity = sanity_check(m, kind, reference, model, prompts, size, args.steps, uncached["latents"])
    bench.record("uncached", "-", uncached["latents"], uncached["seconds"], uncached["calls_per_eval"] * args.steps,
                 uncached)
    calibration = {}
    for granularity in args.granularities:
        suffix = "" if granularity == "module" else f", {granularity}"
        solver_map = None
        if not args.no_calibrate:
            started = time.perf_counter()
            outcome = calibrate(m, kind, model, args.steps, args.intervals, args.calibration_runs, args.cooldown,
                                args.refine, args.budgets, granularity)
            solver_map = outcome.solver_map
            calibration[granularity] = {
                "seconds": round(time.perf_counter() - started, 1), "runs": outcome.runs, "refine": args.refine,
                "closed_loop": solver_map.provenance.get("closed_loop"),
                "schedules": solver_map.provenance.get("schedules")}
            print(f"calibrated a C=2 {granularity} map (refine {args.refine}, budgets {args.budgets}) on "
                  f"{args.calibration_runs}x8 prompts in {calibration[granularity]['seconds']} s, runs {outcome.runs}")
        for n in args.intervals:
            if solver_map is not None:
                bench.record(f"HyCa (map{suffix})", f"N={n}", *bench.measure(
                    hyca(m, model, n, args.cooldown, solver_map, granularity=granularity)), uncached, n=n)
            bench.record(f"HyCa (no map{suffix})", f"N={n}", *bench.measure(
                hyca(m, model, n, args.cooldown, granularity=granularity)), uncached, n=n)
        for budget in args.budgets:
            if solver_map is not None:
                full = solver_map.provenance["schedules"][str(budget)]["full_steps"]
                patched = hyca(m, model, 6, args.cooldown, solver_map, full_steps=budget, granularity=granularity)
                bench.record(f"HyCa (calibrated{suffix})", f"{budget} full: {','.join(map(str, full))}",
                             *bench.measure(patched), uncached, n=budget)
            if args.frontier:
                patched = hyca(m, model, 6, args.cooldown, full_steps=budget, granularity=granularity, schedule="spread")
                bench.record(f"HyCa (no map, spread{suffix})", f"{budget} full", *bench.measure(patched), uncached,
                             n=budget)

    if args.spectrum:
        node = spectrum_node(args.spectrum)
        for knobs in spectrum_settings(args.quick, args.spectrum_grid):
            with contextlib.redirect_stdout(None):  # the pack prints a line per run
                patched = node.execute(model, w=0.5, verbose=False, **knobs).result[0]
                measured = bench.measure(patched)
            bench.record("Spectrum (pack)", " ".join(f"{k}={v:g}" for k, v in knobs.items()), *measured, uncached)

    windows = [NODE_WINDOW, (WARMUP / args.steps, 1.0)]

    def sweep(name, node, base, baseline):
        for start, end in windows:
            for threshold in args.thresholds:
                patched = node.execute(base, threshold, start, end, False).result[0]
                bench.record(name, f"t={threshold:g} [{start:.2f},{end:.2f}]", *bench.measure(patched), baseline)

    easycache_batched = easycache_handles_batched_cfg(m)
    if not args.no_easycache:
        sweep("LazyCache", m.easycache.LazyCacheNode, model, uncached)
        # EasyCache: with the input copy (see guard_input), and with cond and uncond split where this
        # ComfyUI's EasyCache cannot take them batched; its baseline is an uncached run set up the same
        # way, so the wall clock compares like with like
        guarded = guard_input(model)
        with contextlib.nullcontext() if easycache_batched else split_cond_and_uncond(model):
            name, baseline = "EasyCache", uncached
            if not easycache_batched:
                print("this ComfyUI's EasyCache mishandles cond and uncond in one call (ComfyUI #10344): "
                      "running it with cond and uncond split, against an uncached run split the same way")
                name, baseline = "EasyCache (split)", bench.baseline(guarded)
                bench.record("uncached (split)", "-", baseline["latents"], baseline["seconds"],
                             baseline["calls_per_eval"] * args.steps, baseline)
            sweep(name, m.easycache.EasyCacheNode, guarded, baseline)

    # the machine's drift over the run: the uncached time again, for judging the wall-clock columns
    retimed = bench.measure(model)[1]
    print(f"uncached re-timed at the end: {retimed:.2f} s (at the start: {uncached['seconds']:.2f} s)")

    rows = bench.rows
    os.makedirs(args.out, exist_ok=True)
    frontier = None
    if args.frontier:
        table = m.frontier.frontier([r for r in rows if not r["method"].startswith("uncached")], args.steps)
        frontier = {method: {str(k): v for k, v in cells.items()} for method, cells in table.items()}
        text = m.frontier.markdown(table, args.steps)
        with open(os.path.join(args.out, "frontier.md"), "w") as f:
            f.write(text)
        print(text)
    first = calibration[args.granularities[0]] if calibration else {}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"model": args.model, "steps": args.steps, "pairs": args.pairs, "batch": size,
                   "repeats": args.repeats, "cfg": CFG, "warmup": WARMUP, "cooldown": args.cooldown,
                   "cache_windows": windows, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "comfyui": comfyui_version(path), "easycache_batched_cfg": easycache_batched,
                   "calibration": first, "calibrations": calibration, "sanity": sanity,
                   "uncached_seconds": {"start": uncached["seconds"], "end": retimed},
                   "frontier": frontier, "rows": rows}, f, indent=1)
    table = markdown(rows) + (f"\n{args.steps} steps, {args.pairs} held-out prompts in batches of {size}, CFG {CFG}, "
                              f"HyCa warm-up {WARMUP} and cooldown {args.cooldown}, maps calibrated with refine "
                              f"{args.refine}; wall: median of {args.repeats} run(s); uncached took "
                              f"{uncached['seconds']:.2f} s at the start and {retimed:.2f} s at the end. Settings "
                              f"t=threshold [start,end] are EasyCache / LazyCache's reuse_threshold and window. "
                              f"EasyCache's diffusion model gets a copy of its input (with fp32 weights its in-place "
                              f"update corrupts the step).\n")
    if not easycache_batched and not args.no_easycache:
        table += ("\nEasyCache (split): cond and uncond in separate calls (this ComfyUI's EasyCache mishandles them "
                  "batched, ComfyUI #10344); its wall speedup is against uncached (split).\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {args.out}/results.json and results.md" + (" and frontier.md" if args.frontier else ""))
    return 0


def markdown(rows) -> str:
    lines = ["| method | setting | full evals | FLOPs speedup | wall speedup | PSNR dB | SSIM |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        full = f"{r['full']:.0f}" if float(r["full"]).is_integer() else f"{r['full']:.1f}"
        lines.append(f"| {r['method']} | {r['setting']} | {full} | {r['flops_speedup']:.2f}x | "
                     f"{r['wall_speedup']:.2f}x | {r['psnr']:.2f} | {r['ssim']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
