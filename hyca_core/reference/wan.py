"""A compact Wan 2.1-layout DiT whose parameter names, shapes and math match ComfyUI's ``WanModel``.

The second reference model, of another kind than the FLUX-style MMDiT in ``model``: one stream of
image tokens that reads the text through cross-attention, per-block modulation parameters added to
one shared time projection, a 3-d patch embedding (video latents ``[B, C, T, H, W]``; images are one
frame) and a timestep of ``1000 * sigma``. A bundled file loads into this model and, once its text
embedding is widened to the 4096 inputs ComfyUI's detection assumes (``comfy_state_dict``), into
ComfyUI's ``comfy.ldm.wan.model.WanModel``; the forward calls
``transformer_options["patches_replace"]["dit"][("double_block", i)]`` as ComfyUI does, so every
HyCa granularity runs on it without ComfyUI. Written from the Wan 2.1 architecture, not copied.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import EmbedND

COMFY_TEXT_DIM = 4096  # ComfyUI's Wan detection never reads the text width: it builds 4096 inputs
HEAD_DIM = 128  # ... and always makes heads of 128 channels (num_heads = dim // 128)


@dataclass(frozen=True)
class WanConfig:
    in_dim: int = 16
    out_dim: int = 16
    dim: int = 256
    ffn_dim: int = 512
    freq_dim: int = 256
    text_dim: int = 32
    num_layers: int = 4
    patch_size: tuple = (1, 2, 2)
    eps: float = 1e-6

    @property
    def num_heads(self) -> int:
        return self.dim // HEAD_DIM

    def __post_init__(self):
        if self.dim % HEAD_DIM:
            raise ValueError(f"dim must be a multiple of {HEAD_DIM} (ComfyUI's Wan heads), got {self.dim}")

    def as_dict(self) -> dict:
        config = asdict(self)
        config["patch_size"] = list(self.patch_size)
        return config


def sinusoid_1d(dim: int, position: Tensor) -> Tensor:
    """Wan's timestep sinusoid, cosines first, in fp32."""
    half = dim // 2
    angles = torch.outer(position.float(), torch.pow(10000, -torch.arange(half, device=position.device).float() / half))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _rotate(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotary embedding of ``x`` [B, L, heads, head_dim] with rotations [1, L, 1, head_dim/2, 2, 2]."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]).reshape(*x.shape).type_as(x)


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head attention on [B, L, heads * head_dim] inputs."""
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, weight=self.weight.to(x.dtype), eps=self.eps)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.num_heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: Tensor, freqs: Tensor) -> Tensor:
        b, s = x.shape[:2]
        heads = lambda t: t.view(b, s, self.num_heads, -1)  # noqa: E731
        q = _rotate(heads(self.norm_q(self.q(x))), freqs).reshape(b, s, -1)
        k = _rotate(heads(self.norm_k(self.k(x))), freqs).reshape(b, s, -1)
        return self.o(_attention(q, k, self.v(x), self.num_heads))


class CrossAttention(SelfAttention):
    """Text-to-video cross-attention: image tokens ask, text tokens answer; no rotary embedding."""

    def forward(self, x: Tensor, context: Tensor) -> Tensor:  # noqa: D102
        q, k = self.norm_q(self.q(x)), self.norm_k(self.k(context))
        return self.o(_attention(q, k, self.v(context), self.num_heads))


class WanAttentionBlock(nn.Module):
    def __init__(self, c: WanConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(c.dim, c.num_heads, c.eps)
        self.norm3 = nn.LayerNorm(c.dim, c.eps, elementwise_affine=True)  # ComfyUI detects cross_attn_norm on
        self.cross_attn = CrossAttention(c.dim, c.num_heads, c.eps)
        self.norm2 = nn.LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(c.dim, c.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(c.ffn_dim, c.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, c.dim))

    def forward(self, x: Tensor, e: Tensor, freqs: Tensor, context: Tensor) -> Tensor:
        # e: (B, 1, 6, C), the shared time projection; this block adds its own offsets
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.to(x.dtype).unsqueeze(0) + e).unbind(2)
        x = torch.addcmul(x, self.self_attn(torch.addcmul(shift1, self.norm1(x), 1 + scale1), freqs), gate1)
        x = x + self.cross_attn(self.norm3(x), context)
        return torch.addcmul(x, self.ffn(torch.addcmul(shift2, self.norm2(x), 1 + scale2)), gate2)


class Head(nn.Module):
    def __init__(self, c: WanConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.head = nn.Linear(c.dim, c.out_dim * math.prod(c.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, c.dim))

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = (self.modulation.to(x.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))


class WanModel(nn.Module):
    """Flow-matching DiT on latents [B, C, T, H, W] (named like ComfyUI's class on purpose)."""

    def __init__(self, config: WanConfig = WanConfig()):
        super().__init__()
        c = self.config = config
        self.dim, self.freq_dim, self.num_heads = c.dim, c.freq_dim, c.num_heads
        self.patch_size, self.out_dim = tuple(c.patch_size), c.out_dim
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, c.dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(c) for _ in range(c.num_layers)])
        self.head = Head(c)
        d = HEAD_DIM
        self.rope_embedder = EmbedND(10000, [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)])

    def rope(self, frames: int, height: int, width: int, device) -> Tensor:
        """Rotations [1, tokens, 1, head_dim/2, 2, 2] of the (frame, row, column) grid."""
        grid = torch.stack(torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32)
                                            for n in (frames, height, width)), indexing="ij"), -1)
        return self.rope_embedder(grid.reshape(1, -1, 3)).movedim(1, 2)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, transformer_options: dict | None = None) -> Tensor:
        options = transformer_options or {}
        b, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        grid = (t // pt, h // ph, w // pw)
        freqs = self.rope(*grid, device=x.device)
        img = self.patch_embedding(x.float()).to(x.dtype).flatten(2).transpose(1, 2)
        e = self.time_embedding(sinusoid_1d(self.freq_dim, timestep.flatten()).to(x.dtype))
        e = e.reshape(timestep.shape[0], -1, e.shape[-1])
        e0 = self.time_projection(e).unflatten(2, (6, self.dim))
        context = self.text_embedding(context)
        replace = options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.blocks):
            if ("double_block", i) in replace:
                def wrap(args, block=block):
                    return {"img": block(args["img"], args["vec"], args["pe"], args["txt"])}
                img = replace[("double_block", i)](
                    {"img": img, "txt": context, "vec": e0, "pe": freqs, "transformer_options": options},
                    {"original_block": wrap})["img"]
            else:
                img = block(img, e0, freqs, context)
        out = self.head(img, e)
        # unpatchify: tokens (f, h, w) x patch (p, q, r) x channels -> (B, C, T, H, W)
        out = out.view(b, *grid, pt, ph, pw, self.out_dim)
        out = torch.einsum("bfhwpqrc->bcfphqwr", out)
        return out.reshape(b, self.out_dim, t, h, w)


def comfy_state_dict(model: WanModel) -> dict[str, Tensor]:
    """The weights as ComfyUI's ``WanModel`` expects them: the text embedding widened with zero
    columns to the 4096 inputs ComfyUI builds (contexts are zero-padded to match)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("rope_embedder")}
    first = state["text_embedding.0.weight"]
    wide = torch.zeros(first.shape[0], COMFY_TEXT_DIM, dtype=first.dtype)
    wide[:, : first.shape[1]] = first
    state["text_embedding.0.weight"] = wide
    return state


def pad_context(context: Tensor) -> Tensor:
    """A reference context widened to ComfyUI's 4096 text channels (zeros beyond our own)."""
    return F.pad(context, (0, COMFY_TEXT_DIM - context.shape[-1]))
