"""The Comfy Compiler (ComfyUI newer than 0.26, comfy/model_prefetch.py at 03fb330a of
Comfy-Org/ComfyUI; read, not copied): a model brackets its block loop with ``malloc_graph_begin`` /
``malloc_graph_end``, and the allocations in between belong to a malloc graph that the next forward
replays at the same addresses; ``pause_malloc_graph()`` keeps an allocation out of it. What HyCa keeps
past a forward (anchors, gates computed ahead) must therefore be allocated with the graph paused, or a
later forward overwrites it. On the CPU the graph is followed by a dispatch mode that notes every new
allocation made while it records; HyCa gets its pause as ComfyUI's OUTER_SAMPLE wrapper gives it
(``RunState.allocating``). The GPU check with ``--assert-graph-breaks`` is in BENCHMARKS.md's GPU script.
"""

from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hyca_core.model import blocks, families, session
from hyca_core.reference.model import Flux, FluxConfig
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.forecast.schedule import Schedule
from hyca_core.model.session import ApplyConfig

STEPS = 10


class MallocGraph(TorchDispatchMode):
    """Notes each tensor an op allocates (its storage new, not one of its inputs') while recording."""

    def __init__(self):
        super().__init__()
        self.recording, self.paused, self.made = False, 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.recording and not self.paused:
            inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            self.made += [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)
                          and t.untyped_storage().data_ptr() not in inputs]  # kept: no address is reused
        return out

    @contextmanager
    def pause(self, sync=False):  # comfy.model_prefetch.pause_malloc_graph
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def holds(self, tensor: torch.Tensor) -> bool:
        ptr = tensor.untyped_storage().data_ptr()
        return any(t.untyped_storage().data_ptr() == ptr for t in self.made)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Flux(FluxConfig(guidance_embed=True, depth=2, depth_single_blocks=2)).eval().requires_grad_(False)


def sample(model, granularity, paused: bool):
    """A run under HyCa, the block loop of every model call inside the malloc graph."""
    family = families.detect(model)
    patches = session.block_patches(model, family)
    state = ApplyConfig(family, granularity, Schedule(interval=3, warmup=2)).start(model)
    graph = MallocGraph()
    state.allocating = graph.pause if paused else None
    c, g = model.config, torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, 8, 8, generator=g)
    kw = dict(context=torch.randn(2, 5, c.context_in_dim, generator=g), y=torch.randn(2, c.vec_in_dim, generator=g),
              guidance=torch.full((2,), 3.5))
    sigmas, outputs = flux_sigmas(STEPS), []

    def forward(*args, **kwargs):  # the model's forward: its blocks run while the graph records
        graph.recording = True
        try:
            return model(*args, **kwargs)
        finally:
            graph.recording = False

    kept = []
    with graph, torch.no_grad():
        for sigma in sigmas[:-1]:
            t = sigma.expand(2)
            options = {"patches_replace": {"dit": patches}, session.RUN_KEY: state, "sigmas": t[:1],
                       "sample_sigmas": sigmas, "uuids": ["batch"], "cond_or_uncond": [0, 1]}
            forward.class_obj = forward.original = model  # as ComfyUI's WrapperExecutor
            outputs.append(session.evaluate(forward, (x, t, kw["context"], kw["y"]),
                                            {"guidance": kw["guidance"], "transformer_options": options}, options))
            (stream,) = state.run.streams.values()
            kept += [b for ring in stream.store._rings.values() for b in ring.buffers]
            kept += [g for step in stream.gate_plan.steps.values() for gates in step.blocks.values() for g in gates.values()]
    return torch.stack(outputs), kept, graph, stream.stats


@pytest.mark.parametrize("granularity", ["module", "block", "stack"])
@pytest.mark.parametrize("streamed", [False, True])
def test_what_hyca_keeps_past_a_forward_is_allocated_outside_the_malloc_graph(model, monkeypatch, granularity, streamed):
    monkeypatch.setattr(blocks, "weights_streamed", lambda module, device: streamed)  # planned rows ride along
    out, kept, graph, stats = sample(model, granularity, paused=True)
    assert stats.predicted > 0 and kept and graph.made  # it cached, and the blocks allocated in the graph
    if granularity == "module":
        assert stats.gates_ahead == stats.predicted  # the plan was used
    assert not [t.shape for t in kept if graph.holds(t)]
    unpaused, kept, graph, _ = sample(model, granularity, paused=False)
    torch.testing.assert_close(out, unpaused, rtol=0, atol=0)  # the same run, only where memory comes from
    assert any(graph.holds(t) for t in kept)  # without the pause the anchors would be in the graph


def tensors_in(obj, seen=None):
    """Every tensor an object holds (through dicts, lists, tuples and attributes)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        items = list(obj.values()) + list(obj.keys())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        items = list(vars(obj).values())
    else:
        return []
    return [t for item in items for t in tensors_in(item, seen)]


def test_calibration_statistics_are_allocated_outside_the_malloc_graph(model):
    from hyca_core.calibrate.open_loop import CalibrationConfig, Calibrator
    from hyca_core.calibrate.taps import CalibrateConfig

    family = families.detect(model)
    patches = session.block_patches(model, family)
    calibrator = Calibrator(CalibrationConfig(clusters=2, intervals=(2, 3)))
    state = CalibrateConfig(family, "module", calibrator).start(model)
    graph = MallocGraph()
    state.allocating = graph.pause
    c, g = model.config, torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, 8, 8, generator=g)
    kw = dict(context=torch.randn(2, 5, c.context_in_dim, generator=g), y=torch.randn(2, c.vec_in_dim, generator=g))
    sigmas = flux_sigmas(STEPS)

    def forward(*args, **kwargs):
        graph.recording = True
        try:
            return model(*args, **kwargs)
        finally:
            graph.recording = False

    forward.original = forward.class_obj = model
    with graph, torch.no_grad():
        for sigma in sigmas[:-1]:
            t = sigma.expand(2)
            options = {"patches_replace": {"dit": patches}, session.RUN_KEY: state, "sigmas": t[:1],
                       "sample_sigmas": sigmas, "uuids": ["batch"], "cond_or_uncond": [0, 1]}
            session.evaluate(forward, (x, t, kw["context"], kw["y"]), {"guidance": torch.full((2,), 3.5),
                                                                       "transformer_options": options}, options)
    held = tensors_in(calibrator)
    assert held and graph.made and not [t.shape for t in held if graph.holds(t)]
