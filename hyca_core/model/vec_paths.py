"""The ``vec`` a family's blocks receive at a step that has not come yet.

``hyca_core.model.gates`` computes a forecast step's gates on the full step before; for that it needs the
forecast step's vec. Within one sampling run a model's vec depends only on the step's timestep and
on what the call's conditioning holds fixed (pooled text, guidance, reference frames), so each path
below takes the full step's model call, computes the fixed terms once with the model's own
embedding modules, and returns ``vec_at(timestep, step)``: the timestep term for that step, added in
the model's own order of operations (so the result is the model's to the last bit, not close to it).

The paths follow the models' code (ComfyUI's ``comfy/ldm``, read, not copied; see each path), and
they never need to be trusted: every forecast step compares the vec its blocks really receive with
this one, and computes its gates itself when they differ. A family or variant that has no path
here (a vec that depends on more than the timestep) simply computes its gates on each step.
"""

from __future__ import annotations

import math
import functools
import inspect
from typing import Any, Callable, Optional

import torch

VecAt = Callable[[torch.Tensor, int], Any]  # (timestep as the model call gets it, step index) -> vec


class ModelCall:
    """One call of the diffusion model, as the DIFFUSION_MODEL wrapper receives it: ComfyUI's
    models hand their wrapper the arguments of their own ``_forward``, mostly by position, in an
    order that changes between versions, so they are looked up by name through its signature
    (read when first asked: most calls never need it)."""

    def __init__(self, function, args: tuple, kwargs: dict):
        if isinstance(function, torch.nn.Module):
            function = function.forward  # a module's own __call__ takes *args, **kwargs
        self.function, self.args, self.kwargs = function, args, kwargs

    @functools.cached_property
    def named(self) -> dict:
        named = dict(self.kwargs)
        try:
            bound = inspect.signature(self.function).bind_partial(*self.args, **self.kwargs)
        except (TypeError, ValueError):  # no signature to read: keywords only
            return named
        for name, value in bound.arguments.items():
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                named[name] = value
        return named

    def get(self, name: str, default=None):
        return self.named.get(name, default)

    @property
    def x(self) -> torch.Tensor:
        return self.args[0]

    @property
    def timestep(self) -> torch.Tensor:
        return self.args[1] if len(self.args) > 1 else self.named.get("timestep", self.named.get("timesteps"))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, time_factor: float = 1000.0):
    """Sinusoidal embedding, cosines first, as FLUX-style models embed timesteps and guidance."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding.to(t) if torch.is_floating_point(t) else embedding


def _params(model) -> Any:
    """FLUX-style hyperparameters: ComfyUI keeps them in ``params``, the reference model in ``config``."""
    return getattr(model, "params", None) or getattr(model, "config", None)


def flux_vec(model: torch.nn.Module, call: ModelCall) -> Optional[VecAt]:
    """FLUX.1 / Kontext (comfy/ldm/flux/model.py ``forward_orig``):
    ``time_in(emb(t)) [+ guidance_in(emb(guidance))] + vector_in(y[:, :vec_in_dim])``."""
    params, x = _params(model), call.x
    dtype = x.dtype  # the vec follows img_in's output, which has the input's dtype
    guidance_term = None
    guidance = call.get("guidance")
    if getattr(params, "guidance_embed", False) and guidance is not None:
        guidance_term = model.guidance_in(timestep_embedding(guidance, 256).to(dtype))
    vector_term = None
    if getattr(model, "vector_in", None) is not None:
        y = call.get("y")
        if y is None:
            y = torch.zeros((x.shape[0], params.vec_in_dim), device=x.device, dtype=dtype)
        vector_term = model.vector_in(y[:, :params.vec_in_dim])

    def vec_at(timestep: torch.Tensor, step: int) -> torch.Tensor:
        vec = model.time_in(timestep_embedding(timestep, 256).to(dtype))
        if guidance_term is not None:
            vec = vec + guidance_term
        return vec + vector_term if vector_term is not None else vec

    return vec_at


def hunyuan_video_vec(model: torch.nn.Module, call: ModelCall) -> Optional[VecAt]:
    """HunyuanVideo 1.0 / 1.5, T2V and I2V (comfy/ldm/hunyuan_video/model.py ``forward_orig``):
    ``time_in(emb(t, factor 1))``, then the mean-flow term of the next sigma (1.5), then either two
    per-frame rows for the guiding frame (I2V token replace) or ``+ vector_in(y)``, then guidance."""
    params, x = _params(model), call.x
    dtype = x.dtype
    sigmas = (call.get("transformer_options") or {}).get("sample_sigmas")
    time_r = getattr(model, "time_r_in", None) is not None and not call.get("disable_time_r", default=False)
    if time_r and sigmas is None:
        return None
    vector_term = None
    if getattr(model, "vector_in", None) is not None:
        vector_term = model.vector_in(call.get("y")[:, :params.vec_in_dim])
    guiding_frame = call.get("guiding_frame_index")
    token_replace = None
    if guiding_frame is not None:
        token_replace = model.time_in(timestep_embedding(guiding_frame, 256, time_factor=1.0))
    guidance_term = None
    guidance = call.get("guidance")
    if getattr(params, "guidance_embed", False) and guidance is not None:
        guidance_term = model.guidance_in(timestep_embedding(guidance, 256).to(dtype))

    def vec_at(timestep: torch.Tensor, step: int) -> torch.Tensor:
        vec = model.time_in(timestep_embedding(timestep, 256, time_factor=1.0).to(dtype))
        if time_r and step + 1 < len(sigmas):
            # the model looks its sigma up in sample_sigmas and embeds the next one, unscaled
            following = sigmas[step + 1].reshape(1).to(device=timestep.device, dtype=timestep.dtype)
            vec_r = model.time_r_in(timestep_embedding(following, 256, time_factor=1000.0).to(dtype))
            vec = vec + vec_r if getattr(params, "meanflow_sum", False) else (vec + vec_r) / 2
        if token_replace is not None:
            first = vector_term + token_replace if vector_term is not None else token_replace
            rest = vector_term + vec if vector_term is not None else vec
            vec = torch.cat([first.unsqueeze(1), rest.unsqueeze(1)], dim=1)
        elif vector_term is not None:
            vec = vec + vector_term
        return vec + guidance_term if guidance_term is not None else vec

    return vec_at


def qwen_image_vec(model: torch.nn.Module, call: ModelCall) -> Optional[VecAt]:
    """Qwen-Image / -Edit / -Edit-2511 (comfy/ldm/qwen_image/model.py ``_forward``):
    ``time_text_embed(t, hidden_states[, additional_t_cond])``, the timestep batch doubled with a
    zero timestep when reference latents take the ``index_timestep_zero`` path."""
    if call.get("guidance") is not None:
        return None  # older ComfyUI's guidance-distilled variant: left to the on-step gates
    references = call.get("ref_latents")
    method = call.get("ref_latents_method") or getattr(model, "default_ref_method", "index")
    zero = bool(references) and method == "index_timestep_zero"
    extra = call.get("additional_t_cond")
    like = call.x[:1, :1].flatten()  # the embedder only reads hidden_states' dtype: the input's, after img_in

    def vec_at(timestep: torch.Tensor, step: int) -> torch.Tensor:
        if zero:
            timestep = torch.cat([timestep, timestep * 0], dim=0)
        if extra is not None:
            return model.time_text_embed(timestep, like, extra)
        return model.time_text_embed(timestep, like)

    return vec_at


def sinusoid_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep sinusoid, cosines first, in fp32."""
    position = position.type(torch.float32)
    half = dim // 2
    angles = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def wan_time_projection_input(model: torch.nn.Module, call: ModelCall) -> Optional[VecAt]:
    """Wan 2.1 / 2.2 (comfy/ldm/wan/model.py ``forward_orig``): the input of the shared time
    projection, ``time_embedding(sinusoid(t))`` reshaped to (batch, frames or 1, dim); its output
    (``e0``) is what the blocks' gates are made of."""
    if not isinstance(getattr(model, "freq_dim", None), int):
        return None
    dtype = call.x.dtype  # the patch embedding's output, cast back to the input's dtype

    def at(timestep: torch.Tensor, step: int) -> dict:
        e = model.time_embedding(sinusoid_1d(model.freq_dim, timestep.flatten()).to(dtype=dtype))
        return {"time_projection": e.reshape(timestep.shape[0], -1, e.shape[-1])}

    return at
