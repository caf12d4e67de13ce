"""Blocks of newer ComfyUI that the 0.3.64 snapshot cannot run, as small modules that follow the
newest stored ComfyUI code (read, not copied), driven through the same ``patches_replace["dit"]``
protocol:

- FLUX.2 / Klein (comfy/ldm/flux/layers.py at f6274c06, comfy/ldm/flux/model.py at d49420b3, both
  as of Comfy-Org/ComfyUI 6db4fa2f): blocks without modulation of their own (``modulation`` False,
  no ``img_mod``/``txt_mod``); the model computes one shared modulation and hands the blocks
  ``vec = ((img_mod1, img_mod2), (txt_mod1, txt_mod2))`` (double) or ``vec = mod`` (single); the
  residual adds are in place; SiLU-gated MLPs. With reference latents on the ``index_timestep_zero``
  path every image modulation field has two rows and the token ranges live in the block's closure.
- Qwen-Image-Edit-2511 (comfy/ldm/qwen_image/model.py at f8999928): ``index_timestep_zero`` doubles
  the timestep batch, text is modulated with ``temb.chunk(2)[0]`` and the image gate is split at a
  token index held in the block's closure.

The zero-timestep paths keep their token split in the block's closure, not in ``args``: HyCa works
it out from the model call's latent (the target image's tokens come first) and its module self-check
confirms the rebuild; without a latent to count it falls back to block granularity and says so.
"""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hyca_core.model import families
from hyca_core.model import session as patch
from support import patched_options, step_options

D = 16
SIGMAS = torch.linspace(1.0, 0.0, 13)


@dataclass
class ModOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class SharedModulation(nn.Module):
    """On the model, not the blocks (FLUX.2's double_stream_modulation_img / _txt, single_stream_modulation)."""

    def __init__(self, double):
        super().__init__()
        self.double, self.lin = double, nn.Linear(D, (6 if double else 3) * D)

    def forward(self, vec):
        out = self.lin(nn.functional.silu(vec if vec.ndim == 3 else vec[:, None, :])).chunk(6 if self.double else 3, -1)
        return ModOut(*out[:3]), (ModOut(*out[3:]) if self.double else None)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)


class SiluGatedMLP(nn.Module):  # FLUX.2's mlp_silu_act: Linear(h, 2m) -> silu(a) * b -> Linear(m, h)
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(D, 4 * D, bias=False), nn.Linear(2 * D, D, bias=False)

    def forward(self, x):
        a, b = self.up(x).chunk(2, -1)
        return self.down(nn.functional.silu(a) * b)


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / D ** 0.5, -1) @ v


def apply_mod(x, m, dims=None):
    """Gate ``x`` as newer ComfyUI's ``apply_mod`` does: per token range, row ``i`` kept 3-d."""
    if dims is None:
        return x * m
    x = x.clone()
    for start, end, i in dims:
        x[:, start:end] *= m[:, i:i + 1]
    return x


def norm(x, m, dims=None):
    return apply_mod(nn.functional.layer_norm(x, (D,)), 1 + m.scale, dims) + (m.shift if dims is None else 0)


class Flux2Double(nn.Module):
    def __init__(self):
        super().__init__()
        self.modulation = False
        self.img_attn, self.txt_attn = Attn(), Attn()
        self.img_mlp, self.txt_mlp = SiluGatedMLP(), SiluGatedMLP()

    def forward(self, img, txt, vec, modulation_dims_img=None):
        (im1, im2), (tm1, tm2) = vec
        iq, ik, iv = self.img_attn.qkv(norm(img, im1, modulation_dims_img)).chunk(3, -1)
        tq, tk, tv = self.txt_attn.qkv(norm(txt, tm1)).chunk(3, -1)
        a = attention(torch.cat((tq, iq), 1), torch.cat((tk, ik), 1), torch.cat((tv, iv), 1))
        ta, ia = a[:, : txt.shape[1]], a[:, txt.shape[1]:]
        img += apply_mod(self.img_attn.proj(ia), im1.gate, modulation_dims_img)  # in place, as newer ComfyUI
        img += apply_mod(self.img_mlp(norm(img, im2, modulation_dims_img)), im2.gate, modulation_dims_img)
        txt += apply_mod(self.txt_attn.proj(ta), tm1.gate)
        txt += apply_mod(self.txt_mlp(norm(txt, tm2)), tm2.gate)
        return img, txt


class Flux2Single(nn.Module):
    def __init__(self):
        super().__init__()
        self.modulation = None
        self.linear1 = nn.Linear(D, 3 * D + 4 * D, bias=False)  # qkv and the SwiGLU's two halves, fused
        self.linear2 = nn.Linear(D + 2 * D, D, bias=False)

    def forward(self, x, vec, modulation_dims=None):
        qkv, hidden = self.linear1(norm(x, vec, modulation_dims)).split([3 * D, 4 * D], -1)
        a, b = hidden.chunk(2, -1)
        x += apply_mod(self.linear2(torch.cat((attention(*qkv.chunk(3, -1)), nn.functional.silu(a) * b), -1)),
                       vec.gate, modulation_dims)
        return x


class Flux(nn.Module):
    """FLUX.2 / Klein as newer ComfyUI's ``Flux`` runs it (``global_modulation``)."""

    hidden_size = D
    patch_size = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.double_stream_modulation_img, self.double_stream_modulation_txt = SharedModulation(True), SharedModulation(True)
        self.single_stream_modulation = SharedModulation(False)
        self.double_blocks = nn.ModuleList([Flux2Double(), Flux2Double()])
        self.single_blocks = nn.ModuleList([Flux2Single(), Flux2Single()])

    def forward(self, img, txt, vec, transformer_options, reference_tokens=0):
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        extra, txt_vec = {}, vec
        if reference_tokens:  # index_timestep_zero: the batch's second timestep row is zero
            vec = torch.stack((vec, torch.zeros_like(vec)), 1)  # (B, 2, D): rows for target and reference
            first = img.shape[1] - reference_tokens
            extra["modulation_dims_img"] = [(0, first, 0), (first, img.shape[1], 1)]
        mods = (self.double_stream_modulation_img(vec), self.double_stream_modulation_txt(txt_vec))
        for i, block in enumerate(self.double_blocks):
            def wrap(args, block=block):  # the token ranges come from the closure, not from args
                out = {}
                out["img"], out["txt"] = block(args["img"], args["txt"], args["vec"], **extra)
                return out
            args = {"img": img, "txt": txt, "vec": mods, "transformer_options": transformer_options}
            out = replace[("double_block", i)](args, {"original_block": wrap}) if replace else wrap(args)
            img, txt = out["img"], out["txt"]
        x = torch.cat((txt, img), 1)
        single_dims = None
        if reference_tokens:
            single_dims = [(0 if s == 0 else s + txt.shape[1], e + txt.shape[1], i) for s, e, i in extra["modulation_dims_img"]]
        mod, _ = self.single_stream_modulation(vec)
        for i, block in enumerate(self.single_blocks):
            def wrap(args, block=block):
                return {"img": block(args["img"], args["vec"], single_dims)}
            args = {"img": x, "vec": mod, "transformer_options": transformer_options}
            x = (replace[("single_block", i)](args, {"original_block": wrap}) if replace else wrap(args))["img"]
        return x[:, txt.shape[1]:]


def inputs(step, batch=1):
    g = torch.Generator().manual_seed(step)
    scale = 1.0 - step / 13
    return (torch.randn(batch, 12, D, generator=g) * scale, torch.randn(batch, 4, D, generator=g) * scale,
            torch.randn(batch, D, generator=g))


def run(model, granularity, batch=1, **forward):
    family = families.detect(model)
    options, state = patched_options(model, granularity, family)
    outputs, references = [], []
    # the model call's latent, as HyCa sees it: its token count (patch size 1) is the target image's
    latent = torch.zeros(batch, 1, 1, 12 - forward.get("reference_tokens", 0))
    for step in range(12):
        img, txt, vec = inputs(step, batch)
        call = step_options(options, step, SIGMAS)
        outputs.append(patch.evaluate(lambda *a, **k: model(img.clone(), txt.clone(), vec, call, **forward),
                                      (latent,), {}, call))
        references.append(model(img.clone(), txt.clone(), vec, {}, **forward))
    return state, outputs, references


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_flux2_blocks_with_shared_modulation(granularity, batch):
    model = Flux()
    state, outputs, references = run(model, granularity, batch)
    assert state.granularity == granularity and not state.notes  # module: the self-check passed
    stream = state.run.streams[("c",)]
    assert stream.stats.full == 5 and stream.stats.predicted == 7
    for step, mark in enumerate(stream.stats.pattern):
        if mark == "F":
            assert torch.equal(outputs[step], references[step]), step
        assert torch.isfinite(outputs[step]).all()


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_flux2_reference_latents_on_the_zero_timestep_path(granularity, batch):
    """The token ranges are not in ``args``; HyCa works them out from the model call's latent (the
    target's tokens come first), and the module self-check confirms the rebuild."""
    model = Flux()
    state, outputs, references = run(model, granularity, batch, reference_tokens=4)
    assert state.granularity == granularity and not state.notes
    stream = state.run.streams[("c",)]
    assert stream.stats.predicted == 7 and all(torch.isfinite(o).all() for o in outputs)
    for step, mark in enumerate(stream.stats.pattern):
        if mark == "F":
            assert torch.equal(outputs[step], references[step]), step


def test_without_the_latent_the_zero_timestep_path_falls_back_to_block():
    model = Flux()
    family = families.detect(model)
    options, state = patched_options(model, "module", family)
    for step in range(6):
        img, txt, vec = inputs(step)
        call = step_options(options, step, SIGMAS)
        out = patch.evaluate(lambda *a, **k: model(img.clone(), txt.clone(), vec, call, reference_tokens=4),
                             (img,), {}, call)  # a 3-d "latent": no token count to be had
        assert torch.isfinite(out).all()
    assert state.granularity == "block" and any("target token count" in note for note in state.notes)


# -- Qwen-Image-Edit-2511 -------------------------------------------------------------------------------
class QwenAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_qkv, self.add_qkv = nn.Linear(D, 3 * D), nn.Linear(D, 3 * D)
        self.to_out, self.to_add_out = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, img, txt):  # joint attention, text first; returns (img, txt) as ComfyUI's does
        iq, ik, iv = self.to_qkv(img).chunk(3, -1)
        tq, tk, tv = self.add_qkv(txt).chunk(3, -1)
        a = attention(torch.cat((tq, iq), 1), torch.cat((tk, ik), 1), torch.cat((tv, iv), 1))
        return self.to_out(a[:, txt.shape[1]:]), self.to_add_out(a[:, : txt.shape[1]])


class QwenBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.attn = QwenAttention()
        self.img_mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.txt_mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    @staticmethod
    def modulate(x, params, zero_index=None):
        shift, scale, gate = params.chunk(3, -1)
        if zero_index is None:
            return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)
        half = shift.shape[0] // 2  # rows of the real timestep, then of the zero one
        reg = torch.addcmul(shift[:half].unsqueeze(1), x[:, :zero_index], 1 + scale[:half].unsqueeze(1))
        zero = torch.addcmul(shift[half:].unsqueeze(1), x[:, zero_index:], 1 + scale[half:].unsqueeze(1))
        return torch.cat((reg, zero), 1), (gate[:half].unsqueeze(1), gate[half:].unsqueeze(1))

    @staticmethod
    def apply_gate(x, y, gate, zero_index=None):
        if zero_index is None:
            return torch.addcmul(y, gate, x)
        return y + torch.cat((x[:, :zero_index] * gate[0], x[:, zero_index:] * gate[1]), 1)

    def forward(self, img, txt, temb, zero_index=None):
        img_params = self.img_mod(temb)
        if zero_index is not None:
            temb = temb.chunk(2, dim=0)[0]  # text keeps the real timestep
        txt_params = self.txt_mod(temb)
        img_mod1, img_mod2 = img_params.chunk(2, -1)
        txt_mod1, txt_mod2 = txt_params.chunk(2, -1)
        ln = lambda x: nn.functional.layer_norm(x, (D,))  # noqa: E731
        img_in, img_gate1 = self.modulate(ln(img), img_mod1, zero_index)
        txt_in, txt_gate1 = self.modulate(ln(txt), txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in)
        img = self.apply_gate(img_attn, img, img_gate1, zero_index)
        txt = txt + txt_gate1 * txt_attn
        img_in, img_gate2 = self.modulate(ln(img), img_mod2, zero_index)
        img = self.apply_gate(self.img_mlp(img_in), img, img_gate2, zero_index)
        txt_in, txt_gate2 = self.modulate(ln(txt), txt_mod2)
        txt = torch.addcmul(txt, txt_gate2, self.txt_mlp(txt_in))
        return txt, img


class QwenImageTransformer2DModel(nn.Module):
    inner_dim = D
    patch_size = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.transformer_blocks = nn.ModuleList([QwenBlock(), QwenBlock(), QwenBlock()])

    def forward(self, img, txt, vec, transformer_options, reference_tokens=0):
        zero_index = None
        temb = vec
        if reference_tokens:  # index_timestep_zero: the timestep batch doubled, the zero one second
            temb = torch.cat((vec, torch.zeros_like(vec)), 0)
            zero_index = img.shape[1] - reference_tokens
        return self.run_blocks(img, txt, temb, zero_index, transformer_options)[0]

    def run_blocks(self, img, txt, temb, zero_index, transformer_options):
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.transformer_blocks):
            def wrap(args, block=block):  # zero_index comes from the closure, not from args
                out = {}
                out["txt"], out["img"] = block(args["img"], args["txt"], args["vec"], zero_index)
                return out
            args = {"img": img, "txt": txt, "vec": temb, "transformer_options": transformer_options}
            out = replace[("double_block", i)](args, {"original_block": wrap}) if replace else wrap(args)
            img, txt = out["img"], out["txt"]
        return img, txt


@pytest.mark.parametrize("granularity", families.GRANULARITIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_qwen_image_edit_2511(granularity, batch):
    """With and without reference images (the zero-timestep path: text modulated with the real
    timestep, the image gate split at the target's last token), every granularity as asked."""
    for reference_tokens in (0, 4):
        model = QwenImageTransformer2DModel()
        state, outputs, references = run(model, granularity, batch, reference_tokens=reference_tokens)
        assert state.granularity == granularity and not state.notes, state.notes
        stream = state.run.streams[("c",)]
        assert stream.stats.predicted > 0
        for step, mark in enumerate(stream.stats.pattern):
            assert torch.isfinite(outputs[step]).all()
            if mark in "F!":
                assert torch.equal(outputs[step], references[step]), (reference_tokens, step)
