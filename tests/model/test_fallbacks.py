"""No HyCa path ends a sampling run that a fall-back could save: whatever our code raises on a block
it does not know (the module self-check, a forecast's rebuild, a block returning other outputs) the
run goes on one granularity coarser (module -> block -> no caching), computes the failed evaluation
fully and says why in the run's notes. ComfyUI's own block errors still surface unchanged.

Driven through the plain ``patches_replace["dit"]`` protocol with the toy FLUX of test_blocks.
"""

import dataclasses

import pytest
import torch

from hyca_core.model import families
from torch import nn
from hyca_core.model import session as patch
from support import patched_options, step_options
from test_blocks import SIGMAS, Flux, inputs, reference


def evaluate(model, options, step, same_inputs=False):
    """One model call; each (re)computation gets fresh inputs, as ComfyUI's model makes its own
    ``img`` and ``txt`` from the call's arguments (the toy blocks update ``txt`` in place).
    ``same_inputs``: every step sees step 0's inputs, so every forecast is exact."""
    img, txt, vec = inputs(0 if same_inputs else step)
    call = step_options(options, step, SIGMAS)
    return patch.evaluate(lambda *a, **k: model(img.clone(), txt.clone(), vec, call), (img,), {}, call)


def run_with(model, family, granularity, steps=12, same_inputs=False):
    options, state = patched_options(model, granularity, family)
    outputs = [evaluate(model, options, step, same_inputs) for step in range(steps)]
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
    out = families.base.apply_gate(x.clone(), gate, dims)
    for start, end, frame in dims:
        for b in range(2):
            assert torch.allclose(out[b, start:end], x[b, start:end] * gate[b, frame])


class Flux(Flux):  # noqa: F811  the toy FLUX with the single blocks' token order as a parameter
    def __init__(self, order="txt-first", mangle=False):
        super().__init__()
        self.order, self.mangle = order, mangle

    def forward(self, img, txt, vec, transformer_options):
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.double_blocks):
            def wrap(args, block=block):
                out = {}
                out["img"], out["txt"] = block(args["img"], args["txt"], args["vec"])
                return out
            args = {"img": img, "txt": txt, "vec": vec, "transformer_options": transformer_options}
            out = replace[("double_block", i)](args, {"original_block": wrap}) if replace else wrap(args)
            img, txt = out["img"], out["txt"]
        x = torch.cat((txt, img) if self.order == "txt-first" else (img, txt), 1)
        if self.mangle:
            x = x * 1.01  # something between the block lists: no order can explain the input
        for i, block in enumerate(self.single_blocks):
            def wrap(args, block=block):
                return {"img": block(args["img"], args["vec"])}
            args = {"img": x, "vec": vec, "transformer_options": transformer_options}
            x = (replace[("single_block", i)](args, {"original_block": wrap}) if replace else wrap(args))["img"]
        return x[:, txt.shape[1]:] if self.order == "txt-first" else x[:, : img.shape[1]]


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
@pytest.mark.parametrize("order", ["txt-first", "img-first"])
def test_every_granularity_works_with_either_token_order(order, granularity):
    """HunyuanVideo joined img first before its single blocks; newer ComfyUI joins txt first. With
    the same inputs at every step every cached feature is constant, so every forecast is exact
    when, and only when, it is put back where the model expects it (stack: the residual taken
    against the inputs joined in the model's order)."""
    toy = Flux(order)
    state, outputs = run_with(toy, families.detect(toy), granularity, same_inputs=True)
    assert state.granularity == granularity and not state.notes
    assert state.run.streams[("c",)].stats.predicted == 7
    expected = reference(toy, 0)
    for step, out in enumerate(outputs):
        assert torch.allclose(out, expected, atol=1e-5), step


def test_stack_granularity_falls_back_when_no_token_order_explains_the_input():
    toy = Flux(mangle=True)
    state, outputs = run_with(toy, families.detect(toy), "stack")
    assert state.granularity == "block" and any("token order" in note for note in state.notes)
    assert torch.equal(outputs[0], reference(toy, 0))


# -- living with newer ComfyUI ------------------------------------------------------------------------
def test_another_nodes_block_replacement_runs_on_full_steps_and_is_skipped_on_forecasts():
    """ComfyUI's own nodes install dit replacements too (block-sparse attention): HyCa keeps them."""
    toy = Flux()
    family = families.detect(toy)
    calls = []

    def other(args, extra):  # another node's replacement: runs the block, counts itself
        calls.append(1)
        return extra["original_block"](args)
    existing = {("double_block", 0): other}
    options, state = patched_options(toy, "block", family, existing)
    outputs = [evaluate(toy, options, step) for step in range(12)]
    stream = state.run.streams[("c",)]
    assert len(calls) == stream.stats.full == 5 and stream.stats.predicted == 7
    assert torch.equal(outputs[0], reference(toy, 0))
    again = patch.block_patches(toy, family, options["patches_replace"]["dit"])  # HyCa on HyCa: replaced
    assert again[("double_block", 0)].inner is other and again[("double_block", 1)].inner is None


class Executor:
    """ComfyUI's wrapper executor as the DIFFUSION_MODEL wrapper sees it: ``class_obj`` is the model
    that runs this call (with multi-GPU sampling, each device's own copy)."""

    def __init__(self, model, img, txt, vec, call):
        self.class_obj, self.inputs, self.call = model, (img, txt, vec), call

    def __call__(self, *args, **kwargs):
        img, txt, vec = self.inputs
        return self.class_obj(img.clone(), txt.clone(), vec, self.call)


def test_module_hooks_go_on_the_model_that_runs_the_call():
    first, device_copy = Flux(), Flux()
    device_copy.load_state_dict(first.state_dict())
    family = families.detect(first)
    options, state = patched_options(first, "module", family)
    for step in range(6):
        img, txt, vec = inputs(step)
        call = step_options(options, step, SIGMAS)
        out = patch.evaluate(Executor(device_copy, img, txt, vec, call), (img,), {}, call)
        assert torch.isfinite(out).all()
    assert state.granularity == "module" and not state.notes


def test_multi_gpu_workers_evaluate_their_conds_at_once():
    """Multi-GPU sampling (ComfyUI 0.2x ``comfy/multigpu.py``) calls the model from one worker thread
    per device, cond on one and uncond on the other, at once: each (cond, device) has its own stream,
    nothing serialises the workers, and each cond gets the outputs of a run on one thread."""
    import threading

    toy = Flux()
    family = families.detect(toy)

    def run(parallel: bool):
        options, state = patched_options(toy, "block", family)
        meet = threading.Barrier(2, timeout=10)  # both workers inside the model at once, or it breaks
        outputs = {0: [], 1: []}

        def worker(cond):
            for step in range(8):
                img, txt, vec = inputs(step)
                opts = step_options(options, step, SIGMAS, uuids=[f"c{cond}"])
                opts["multigpu_thread_device"] = torch.device("cpu", cond)

                def executor(*a, **k):
                    if parallel:
                        meet.wait()
                    return toy(img.clone(), txt.clone(), vec, opts)
                outputs[cond].append(patch.evaluate(executor, (img,), {}, opts))

        if parallel:
            threads = [threading.Thread(target=worker, args=(cond,)) for cond in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            worker(0), worker(1)
        return outputs, state

    (together, state), (alone, _) = run(parallel=True), run(parallel=False)
    for cond in (0, 1):
        assert len(together[cond]) == 8
        for a, b in zip(together[cond], alone[cond]):
            assert torch.equal(a, b)
    rows = state.report()
    assert sorted(r["cond"] for r in rows) == ["positive on cpu:0", "positive on cpu:1"]
    assert all(r["full"] + r["predicted"] == 8 and r["predicted"] > 0 for r in rows)


# -- a DiT of no known family ---------------------------------------------------------------------------
class LTXVLike(nn.Module):
    """Like ComfyUI's LTXV: one list ``transformer_blocks`` called as "double_block", each block
    returning only ``img`` (the text is cross-attended, never updated)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.transformer_blocks = nn.ModuleList(
            [nn.ModuleDict({"self": nn.Linear(16, 16), "cross": nn.Linear(16, 16)}) for _ in range(3)])

    def forward(self, img, txt, vec, transformer_options):
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.transformer_blocks):
            def wrap(args, block=block):
                x = args["img"]
                x = x + torch.tanh(block["self"](x)) * args["vec"][:, None]
                return {"img": x + block["cross"](args["txt"]).mean(1, keepdim=True)}
            args = {"img": img, "txt": txt, "vec": vec, "transformer_options": transformer_options}
            img = (replace[("double_block", i)](args, {"original_block": wrap}) if replace else wrap(args))["img"]
        return img


@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_a_dit_of_no_known_family_is_cached_through_its_block_lists(granularity):
    toy = LTXVLike()
    with pytest.raises(families.UnsupportedModel, match="LTXVLike.*known family"):
        families.detect(toy)  # maps and module granularity need one
    family = families.detect(toy, generic=True)
    assert not family.known and family.blocks == (("double_block", "transformer_blocks"),)
    state, outputs = run_with(toy, family, granularity, same_inputs=True)
    assert state.granularity == granularity and not state.notes
    assert state.run.streams[("c",)].stats.predicted == 7
    expected = reference(toy, 0)
    for step, out in enumerate(outputs):  # constant inputs: every forecast exact
        assert torch.allclose(out, expected, atol=1e-5), step


def test_a_model_without_block_lists_is_refused_naming_what_it_has():
    class NotADiT(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(families.UnsupportedModel, match="NotADiT.*its module lists: layers"):
        families.detect(NotADiT(), generic=True)


def test_a_dit_hyca_cannot_cache_yet_is_refused_saying_why():
    """LTX-2 (ComfyUI 0.26 comfy/ldm/lightricks/av_model.py): its ``transformer_blocks`` would be found,
    but each gets ``img = (video, audio)``."""
    class LTXVModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = nn.ModuleList([nn.Linear(2, 2)])

    class LTXAVModel(LTXVModel):
        pass

    assert families.detect(LTXVModel(), generic=True).blocks == (("double_block", "transformer_blocks"),)
    with pytest.raises(families.UnsupportedModel, match="LTXAVModel models yet: LTX-2's blocks .* one tuple.*bypass"):
        families.detect(LTXAVModel(), generic=True)


def test_a_model_that_hides_the_options_from_its_blocks_is_sampled_uncached_and_says_so():
    """ComfyUI 0.3.64's Wan S2V calls its block replacements without ``transformer_options``: HyCa
    cannot reach the blocks, so the run is computed as it is, and the report does not claim forecasts."""
    class Hiding(Flux):
        def forward(self, img, txt, vec, transformer_options):
            hidden = {k: v for k, v in transformer_options.items() if k == "patches_replace"}
            return super().forward(img, txt, vec, hidden)  # the blocks' args lack transformer_options

    toy = Hiding()
    state, outputs = run_with(toy, families.detect(toy), "block")
    assert state.granularity == "off" and any("never received" in note for note in state.notes)
    for step, out in enumerate(outputs):
        assert torch.equal(out, reference(toy, step)), step
