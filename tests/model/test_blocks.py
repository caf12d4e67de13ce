"""Block replacements through the plain ``patches_replace["dit"]`` protocol, without ComfyUI.

A toy FLUX-style model mirrors the parts of ComfyUI's ``Flux`` the pack relies on: attribute
names, modulation objects with ``.gate``, blocks that update ``txt`` in place, and a forward loop
that calls ``patches_replace["dit"][("double_block", i)](args, {"original_block": fn})``.
"""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hyca_core.model import blocks, families
from hyca_core.model import session as patch
from hyca_core.forecast.schedule import Schedule

D = 16


@dataclass
class ModOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class Modulation(nn.Module):
    def __init__(self, double):
        super().__init__()
        self.double = double
        self.lin = nn.Linear(D, (6 if double else 3) * D)

    def forward(self, vec):
        out = self.lin(nn.functional.silu(vec[:, None, :])).chunk(6 if self.double else 3, dim=-1)
        return ModOut(*out[:3]), (ModOut(*out[3:]) if self.double else None)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)


def mlp():
    return nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / D ** 0.5, -1) @ v


class Double(nn.Module):
    def __init__(self):
        super().__init__()
        self.img_mod, self.txt_mod = Modulation(True), Modulation(True)
        self.img_attn, self.txt_attn = Attn(), Attn()
        self.img_mlp, self.txt_mlp = mlp(), mlp()

    def forward(self, img, txt, vec):
        im1, im2 = self.img_mod(vec)
        tm1, tm2 = self.txt_mod(vec)
        norm = lambda x, m: nn.functional.layer_norm(x, (D,)) * (1 + m.scale) + m.shift  # noqa: E731
        iq, ik, iv = self.img_attn.qkv(norm(img, im1)).chunk(3, -1)
        tq, tk, tv = self.txt_attn.qkv(norm(txt, tm1)).chunk(3, -1)
        a = attention(torch.cat((tq, iq), 1), torch.cat((tk, ik), 1), torch.cat((tv, iv), 1))
        ta, ia = a[:, : txt.shape[1]], a[:, txt.shape[1]:]
        img = img + self.img_attn.proj(ia) * im1.gate
        img = img + self.img_mlp(norm(img, im2)) * im2.gate
        txt += self.txt_attn.proj(ta) * tm1.gate  # in place, as ComfyUI's block does
        txt += self.txt_mlp(norm(txt, tm2)) * tm2.gate
        return img, txt


class Single(nn.Module):
    def __init__(self):
        super().__init__()
        self.modulation = Modulation(False)
        self.linear1, self.linear2 = nn.Linear(D, 3 * D + 2 * D), nn.Linear(D + 2 * D, D)

    def forward(self, x, vec):
        mod, _ = self.modulation(vec)
        qkv, hidden = self.linear1(nn.functional.layer_norm(x, (D,)) * (1 + mod.scale) + mod.shift).split([3 * D, 2 * D], -1)
        q, k, v = qkv.chunk(3, -1)
        x += self.linear2(torch.cat((attention(q, k, v), nn.functional.gelu(hidden)), -1)) * mod.gate
        return x


class Flux(nn.Module):
    """Named like ComfyUI's class so the family is recognised."""

    hidden_size = D

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.double_blocks = nn.ModuleList([Double(), Double()])
        self.single_blocks = nn.ModuleList([Single(), Single()])

    def forward(self, img, txt, vec, transformer_options):
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.double_blocks):
            if ("double_block", i) in replace:
                def wrap(args, block=block):
                    out = {}
                    out["img"], out["txt"] = block(args["img"], args["txt"], args["vec"])
                    return out
                out = replace[("double_block", i)]({"img": img, "txt": txt, "vec": vec,
                                                   "transformer_options": transformer_options}, {"original_block": wrap})
                img, txt = out["img"], out["txt"]
            else:
                img, txt = block(img, txt, vec)
        x = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            if ("single_block", i) in replace:
                def wrap(args, block=block):
                    return {"img": block(args["img"], args["vec"])}
                x = replace[("single_block", i)]({"img": x, "vec": vec, "transformer_options": transformer_options},
                                                 {"original_block": wrap})["img"]
            else:
                x = block(x, vec)
        return x[:, txt.shape[1]:]


SIGMAS = torch.linspace(1.0, 0.0, 13)


def inputs(step, batch=1):
    g = torch.Generator().manual_seed(step)
    scale = 1.0 - step / 13
    return (torch.randn(batch, 12, D, generator=g) * scale, torch.randn(batch, 4, D, generator=g) * scale,
            torch.randn(batch, D, generator=g))


def replacements(model, granularity, interval=3, warmup=2):
    family = families.detect(model)
    options = {"patches_replace": {"dit": patch.block_patches(model, family)}}
    config = patch.ApplyConfig(family, granularity, Schedule(interval=interval, warmup=warmup))
    options[patch.RUN_KEY] = config.start(model)
    return options


def evaluate(model, options, step, uuids=("c",), batch=1):
    img, txt, vec = inputs(step, batch)
    call = dict(options, sigmas=SIGMAS[step:step + 1], sample_sigmas=SIGMAS, uuids=list(uuids), cond_or_uncond=[0])
    return patch.evaluate(lambda *a, **k: model(img, txt, vec, call), (img,), {}, call)


@pytest.fixture(scope="module")
def model():
    return Flux()


def reference(model, step, batch=1):
    img, txt, vec = inputs(step, batch)
    return model(img, txt, vec, {})


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_full_evaluations_are_bit_identical_and_predictions_close(model, granularity):
    options = replacements(model, granularity)
    stream = None
    for step in range(12):
        out = evaluate(model, options, step)
        stream = options[patch.RUN_KEY].run.streams[("c",)]
        if stream.full:
            assert torch.equal(out, reference(model, step)), step
        else:
            assert torch.isfinite(out).all()
    assert stream.stats.full == 5 and stream.stats.predicted == 7  # 0, 1 warm-up; 4, 7, 10
    assert options[patch.RUN_KEY].granularity == granularity  # the module rebuild matched the block


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_predicted_evaluations_skip_attention_and_mlp(model, granularity):
    heavy = [m for n, m in model.named_modules() if n.endswith(("qkv", "mlp", "linear1"))]
    options = replacements(model, granularity)
    counts = []
    for step in range(6):
        calls = []
        handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in heavy]
        evaluate(model, options, step)
        for h in handles:
            h.remove()
        counts.append(len(calls))
    assert counts == [len(heavy), len(heavy), 0, 0, len(heavy), 0]


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
def test_predicted_steps_never_write_into_their_inputs(model, granularity):
    options = replacements(model, granularity)
    for step in range(3):
        img, txt, vec = inputs(step)
        copies = (img.clone(), txt.clone())
        call = dict(options, sigmas=SIGMAS[step:step + 1], sample_sigmas=SIGMAS, uuids=["c"], cond_or_uncond=[0])
        patch.evaluate(lambda *a, **k: model(img, txt, vec, call), (img,), {}, call)
        if step == 2:  # predicted
            assert torch.equal(img, copies[0]) and torch.equal(txt, copies[1])


def test_each_cond_has_its_own_stream(model):
    options = replacements(model, "module")
    for step in range(3):
        evaluate(model, options, step, uuids=("cond",))
        evaluate(model, options, step, uuids=("uncond",))
    streams = options[patch.RUN_KEY].run.streams
    assert set(streams) == {("cond",), ("uncond",)}
    assert all(s.stats.full == 2 and s.stats.predicted == 1 for s in streams.values())


def test_without_run_state_blocks_run_unchanged(model):
    options = replacements(model, "module")
    options.pop(patch.RUN_KEY)
    img, txt, vec = inputs(0)
    call = dict(options, sigmas=SIGMAS[:1], sample_sigmas=SIGMAS)
    assert torch.equal(patch.evaluate(lambda *a, **k: model(img, txt, vec, call), (img,), {}, call),
                       reference(model, 0))


def test_hooks_are_removed_after_every_call(model):
    options = replacements(model, "module")
    for step in range(5):
        evaluate(model, options, step)
    assert all(not m._forward_hooks for m in model.modules())


def test_family_features_and_architecture(model):
    family = families.detect(model)
    arch = families.architecture(model, family, "module")
    assert arch["hidden_size"] == D and arch["blocks"] == {"double_blocks": 2, "single_blocks": 2}
    assert arch["features"][:4] == ["double_blocks.0.img_attn", "double_blocks.0.img_mlp",
                                    "double_blocks.0.txt_attn", "double_blocks.0.txt_mlp"]
    assert families.feature_names(family, arch["blocks"], "block")[-1] == "single_blocks.1.img"
    assert families.feature_names(family, arch["blocks"], "stack") == ["stack"]


def test_auto_cache_device_budget():
    # one evaluation's features: 1 GiB; 3 anchors for cond and uncond: 5 GiB still to come
    assert patch.anchors_still_needed(2 ** 30, 3, 2) == 5 * 2 ** 30
    assert patch.FREE_MEMORY_SHARE * 8 * 2 ** 30 < patch.anchors_still_needed(2 ** 30, 3, 2)  # 8 GiB free: offload
    assert patch.FREE_MEMORY_SHARE * 16 * 2 ** 30 > patch.anchors_still_needed(2 ** 30, 3, 2)  # 16 GiB free: stay


def test_cpu_run_is_never_moved(model):
    options = replacements(model, "block")
    options[patch.RUN_KEY].free_memory = lambda device: 0  # would offload anything on a GPU
    for step in range(3):
        evaluate(model, options, step)
    state = options[patch.RUN_KEY]
    assert state.placed and state.run.cache_device is None and not state.notes
