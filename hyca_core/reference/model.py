"""A compact FLUX-style MMDiT whose parameter names, shapes and math match ComfyUI's ``Flux``.

One safetensors file loads into this model and into ComfyUI's ``comfy.ldm.flux.model.Flux`` of the
same configuration (the integration tests check equal outputs). Blocks keep ComfyUI's branch
split (``img_attn.proj``, ``img_mlp``, ``txt_attn.proj``, ``txt_mlp``, single ``linear2``) and the
forward calls ``transformer_options["patches_replace"]["dit"]`` exactly as ComfyUI does, so every
HyCa granularity runs on it without ComfyUI. Written from the FLUX architecture, not copied.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class FluxConfig:
    in_channels: int = 16  # latent channels (before 2x2 patching)
    out_channels: int = 16
    vec_in_dim: int = 32  # pooled text vector
    context_in_dim: int = 32  # text token features
    hidden_size: int = 128
    mlp_ratio: float = 2.0
    num_heads: int = 4
    depth: int = 2  # double-stream blocks
    depth_single_blocks: int = 4
    axes_dim: tuple = (8, 12, 12)
    theta: int = 10000
    patch_size: int = 2
    qkv_bias: bool = True
    guidance_embed: bool = False

    def comfy_unet_config(self) -> dict:
        """The ``unet_config`` for ``comfy.supported_models.Flux`` of the same architecture."""
        config = asdict(self)
        config["axes_dim"] = list(self.axes_dim)
        return {"image_model": "flux", **config}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, time_factor: float = 1000.0) -> Tensor:
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype if t.is_floating_point() else torch.float32)


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices [..., n, dim/2, 2, 2] for positions ``pos`` [..., n] on one axis."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta ** scale)
    angle = torch.einsum("...n,d->...nd", pos.to(torch.float32), omega)
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], dim=-1)
    return rot.reshape(*rot.shape[:-1], 2, 2).float()


class EmbedND(nn.Module):
    def __init__(self, theta: int, axes_dim):
        super().__init__()
        self.theta, self.axes_dim = theta, list(axes_dim)

    def forward(self, ids: Tensor) -> Tensor:
        return torch.cat([rope(ids[..., i], d, self.theta) for i, d in enumerate(self.axes_dim)], dim=-3).unsqueeze(1)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """Rotary attention; q, k, v are [B, heads, L, head_dim]; returns [B, L, heads*head_dim]."""
    def rotate(x):
        x_ = x.to(pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
        return (pe[..., 0] * x_[..., 0] + pe[..., 1] * x_[..., 1]).reshape(*x.shape).type_as(v)

    out = F.scaled_dot_product_attention(rotate(q), rotate(k), v)
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.scale.shape, weight=self.scale.to(x.dtype), eps=1e-6)


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec: Tensor):
        out = self.lin(F.silu(vec[:, None, :] if vec.ndim == 2 else vec)).chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), (ModulationOut(*out[3:]) if self.multiplier == 6 else None)


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _split_heads(qkv: Tensor, heads: int):
    return qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.num_heads = heads
        self.img_mod, self.txt_mod = Modulation(dim, True), Modulation(dim, True)
        self.img_attn, self.txt_attn = SelfAttention(dim, heads, qkv_bias), SelfAttention(dim, heads, qkv_bias)
        self.img_mlp, self.txt_mlp = _mlp(dim, hidden), _mlp(dim, hidden)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor):
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        iq, ik, iv = _split_heads(self.img_attn.qkv(torch.addcmul(img_mod1.shift, _layer_norm(img), 1 + img_mod1.scale)), self.num_heads)
        iq, ik = self.img_attn.norm(iq, ik, iv)
        tq, tk, tv = _split_heads(self.txt_attn.qkv(torch.addcmul(txt_mod1.shift, _layer_norm(txt), 1 + txt_mod1.scale)), self.num_heads)
        tq, tk = self.txt_attn.norm(tq, tk, tv)
        attn = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + self.img_attn.proj(img_attn) * img_mod1.gate
        img = img + self.img_mlp(torch.addcmul(img_mod2.shift, _layer_norm(img), 1 + img_mod2.scale)) * img_mod2.gate
        # ComfyUI's block updates txt in place; so does this one at inference (autograd cannot)
        add = torch.Tensor.add if torch.is_grad_enabled() else torch.Tensor.add_
        txt = add(txt, self.txt_attn.proj(txt_attn) * txt_mod1.gate)
        txt = add(txt, self.txt_mlp(torch.addcmul(txt_mod2.shift, _layer_norm(txt), 1 + txt_mod2.scale)) * txt_mod2.gate)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.hidden_size, self.num_heads = dim, heads
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.linear1 = nn.Linear(dim, dim * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.norm = QKNorm(dim // heads)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(dim, False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor) -> Tensor:
        mod, _ = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1(torch.addcmul(mod.shift, _layer_norm(x), 1 + mod.scale)),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        output = self.linear2(torch.cat((attention(q, k, v, pe), self.mlp_act(mlp)), 2))
        add = torch.Tensor.add if torch.is_grad_enabled() else torch.Tensor.add_
        return add(x, output * mod.gate)


class LastLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec[:, None, :]).chunk(2, dim=-1)
        return self.linear(torch.addcmul(shift, _layer_norm(x), 1 + scale))


class Flux(nn.Module):
    """Flow-matching MMDiT on latents [B, C, H, W] (named like ComfyUI's class on purpose)."""

    def __init__(self, config: FluxConfig = FluxConfig()):
        super().__init__()
        c = self.config = config
        if c.hidden_size % c.num_heads or sum(c.axes_dim) != c.hidden_size // c.num_heads:
            raise ValueError(f"axes_dim {c.axes_dim} must sum to hidden_size / num_heads = {c.hidden_size // c.num_heads}")
        self.hidden_size, self.patch_size = c.hidden_size, c.patch_size
        patch = c.patch_size * c.patch_size
        self.pe_embedder = EmbedND(c.theta, c.axes_dim)
        self.img_in = nn.Linear(c.in_channels * patch, c.hidden_size)
        self.time_in = MLPEmbedder(256, c.hidden_size)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size)
        self.guidance_in = MLPEmbedder(256, c.hidden_size) if c.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size)
        self.double_blocks = nn.ModuleList(
            [DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias) for _ in range(c.depth)])
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth_single_blocks)])
        self.final_layer = LastLayer(c.hidden_size, c.out_channels * patch)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor, guidance: Tensor = None,
                transformer_options: dict | None = None) -> Tensor:
        img, img_ids, txt_ids = self.embed_image(x, context)
        vec = self.time_in(timestep_embedding(timestep, 256).to(img.dtype))
        if self.config.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y[:, : self.config.vec_in_dim])
        return self.run_blocks(x, img, img_ids, txt_ids, context, vec, transformer_options or {})

    def embed_image(self, x: Tensor, context: Tensor) -> tuple:
        """The latent's tokens through ``img_in``, and the positions of image and text tokens."""
        b, _, h, w = x.shape
        p = self.patch_size
        img = x.reshape(b, -1, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
        rows = torch.arange(h // p, device=x.device, dtype=x.dtype)
        cols = torch.arange(w // p, device=x.device, dtype=x.dtype)
        img_ids = torch.stack([torch.zeros(h // p, w // p, device=x.device, dtype=x.dtype),
                               rows[:, None].expand(-1, w // p), cols[None, :].expand(h // p, -1)], -1)
        img_ids = img_ids.reshape(1, -1, 3).expand(b, -1, -1)
        txt_ids = torch.zeros(b, context.shape[1], 3, device=x.device, dtype=x.dtype)
        return self.img_in(img), img_ids, txt_ids

    def run_blocks(self, x: Tensor, img: Tensor, img_ids: Tensor, txt_ids: Tensor, context: Tensor, vec: Tensor,
                   options: dict) -> Tensor:
        """Everything after the conditioning vector: the block stack, through the patches, and the
        final layer (kept apart so that tests can give it another model's ``vec``)."""
        b, _, h, w = x.shape
        p = self.patch_size
        txt = self.txt_in(context)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

        replace = options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.double_blocks):
            if ("double_block", i) in replace:
                def wrap(args, block=block):
                    out = {}
                    out["img"], out["txt"] = block(args["img"], args["txt"], args["vec"], args["pe"])
                    return out
                out = replace[("double_block", i)](
                    {"img": img, "txt": txt, "vec": vec, "pe": pe, "transformer_options": options}, {"original_block": wrap})
                img, txt = out["img"], out["txt"]
            else:
                img, txt = block(img, txt, vec, pe)
        img = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            if ("single_block", i) in replace:
                def wrap(args, block=block):
                    return {"img": block(args["img"], args["vec"], args["pe"])}
                img = replace[("single_block", i)](
                    {"img": img, "vec": vec, "pe": pe, "transformer_options": options}, {"original_block": wrap})["img"]
            else:
                img = block(img, vec, pe)
        img = self.final_layer(img[:, txt.shape[1]:], vec)
        out = img.reshape(b, h // p, w // p, -1, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, -1, h, w)
