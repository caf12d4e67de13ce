"""No HyCa path ends a sampling run that a fall-back could save: whatever our code raises on a block
it does not know (the module self-check, a forecast's rebuild, a block returning other outputs) the
run goes on one granularity coarser (module -> block -> no caching), computes the failed evaluation
fully and says why in the run's notes. ComfyUI's own block errors still surface unchanged.

Driven through the plain ``patches_replace["dit"]`` protocol with the toy FLUX of test_blocks.
"""

import dataclasses

import pytest
import torch

from hyca_core import families
from hyca_core import session as patch
from hyca_core.schedule import Schedule
from test_blocks import SIGMAS, Flux, inputs, reference


def evaluate(model, options, step):
    """One model call; each (re)computation gets fresh inputs, as ComfyUI's model makes its own
    ``img`` and ``txt`` from the call's arguments (the toy blocks update ``txt`` in place)."""
    img, txt, vec = inputs(step)
    call = dict(options, sigmas=SIGMAS[step:step + 1], sample_sigmas=SIGMAS, uuids=["c"], cond_or_uncond=[0])
    return patch.evaluate(lambda *a, **k: model(img.clone(), txt.clone(), vec, call), (img,), {}, call)


def run_with(model, family, granularity, steps=12):
    options = {"patches_replace": {"dit": patch.block_patches(model, family)}}
    config = patch.ApplyConfig(family, granularity, Schedule(interval=3, warmup=2))
    options[patch.RUN_KEY] = state = config.start(model)
    outputs = [evaluate(model, options, step) for step in range(steps)]
    return state, outputs


def with_adapter(family, kind, **changes):
    adapter = dataclasses.replace(family.adapters[kind], **changes)
    return dataclasses.replace(family, adapters={**family.adapters, kind: adapter})


@pytest.fixture(scope="module")
def model():
    return Flux()


def test_an_adapter_raising_in_the_self_check_falls_back_to_block(model):
    def rebuild(block, args, f):
        raise AttributeError("'DoubleStreamBlock' object has no attribute 'img_mod'")  # FLUX.2's blocks
    family = with_adapter(families.detect(model), "double_block", rebuild=rebuild)
    state, outputs = run_with(model, family, "module")
    assert state.granularity == "block"
    assert any("AttributeError" in note and "falling back to block granularity" in note for note in state.notes)
    stream = state.run.streams[("c",)]
    assert stream.stats.predicted > 0 and all(torch.isfinite(o).all() for o in outputs)
    assert torch.equal(outputs[0], reference(model, 0))  # the failed full step is ComfyUI's own output


def test_a_forecast_that_raises_is_computed_fully_and_the_run_goes_on(model):
    family = families.detect(model)
    calls = []

    def rebuild(block, args, f):
        calls.append(1)
        if len(calls) > len(model.double_blocks):  # the self-check passes; the first forecast fails
            raise RuntimeError("The size of tensor a (2) must match the size of tensor b (4)")
        return family.adapters["double_block"].rebuild(block, args, f)
    state, outputs = run_with(model, with_adapter(family, "double_block", rebuild=rebuild), "module")
    assert state.granularity == "block" and any("RuntimeError" in note for note in state.notes)
    stream = state.run.streams[("c",)]
    assert "!" in stream.stats.pattern  # the failed forecast, computed fully
    failed = stream.stats.pattern.index("!")
    assert torch.equal(outputs[failed], reference(model, failed))
    assert stream.stats.predicted > 0


def test_a_block_with_other_outputs_turns_caching_off_and_samples_unchanged(model):
    family = dataclasses.replace(families.detect(model), outputs={"double_block": ("img", "txt", "temb"),
                                                                  "single_block": ("img",)})
    state, outputs = run_with(model, family, "block")
    assert state.granularity == "off" and any("no caching" in note for note in state.notes)
    for step, out in enumerate(outputs):
        assert torch.equal(out, reference(model, step)), step


def test_comfyuis_own_block_errors_are_not_hidden(model):
    class Broken(Flux):
        pass
    broken = Broken()
    broken.load_state_dict(model.state_dict())
    original_forward = broken.single_blocks[1].forward

    def forward(x, vec):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory") if x.shape[0] else original_forward(x, vec)
    broken.single_blocks[1].forward = forward
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with(broken, families.detect(model), "module", steps=1)


def test_per_frame_gates_broadcast_per_sample():
    """HunyuanVideo's per-frame modulation at batch 2: frame i's gate is ``gate[:, i:i+1]``."""
    x = torch.randn(2, 6, 4)
    gate = torch.randn(2, 3, 4)  # (batch, frames, channels)
    dims = [(0, 2, 0), (2, 4, 1), (4, 6, 2)]
    out = families._gate(x.clone(), gate, dims)
    for start, end, frame in dims:
        for b in range(2):
            assert torch.allclose(out[b, start:end], x[b, start:end] * gate[b, frame])
