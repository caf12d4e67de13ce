"""Sampling the reference models: each one's flow-matching schedule, Euler steps, CFG, and a hook
for caching (``evaluate``), plus loading and saving the bundled weights.

Two reference models, of two kinds (``KINDS``): the FLUX-style MMDiT on shape scenes (``model``,
``data``) and the Wan-layout DiT on textures (``wan``, ``textures``). A kind says how the sampler's
state becomes the model's call, so the same sampler, benchmarks and HyCa drivers run both."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import data, textures
from .data import LATENT_CHANNELS, TextEncoder
from .model import Flux, FluxConfig
from .wan import WanConfig, WanModel

_WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHTS = os.path.join(_WEIGHTS_DIR, "reference-flux.safetensors")
WAN_WEIGHTS = os.path.join(_WEIGHTS_DIR, "reference-wan.safetensors")
SHIFT = 1.15  # ComfyUI's default for FLUX (ModelSamplingFlux)
WAN_SHIFT = 3.0  # ModelSamplingSD3-style shift the Wan reference samples (and was trained) with


def flux_sigmas(steps: int, shift: float = SHIFT) -> torch.Tensor:
    """steps+1 descending sigmas from 1 to 0, time-shifted as FLUX's sampling does."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    inner = (1.0 / t[:-1] - 1.0).clamp_min(0.0)
    sigmas = math.exp(shift) / (math.exp(shift) + inner)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def discrete_flow_sigmas(steps: int, shift: float = WAN_SHIFT) -> torch.Tensor:
    """steps+1 descending sigmas as ComfyUI's "simple" scheduler picks them from the 1000-entry
    table of ``ModelSamplingDiscreteFlow`` (Wan, SD3) with ``shift``."""
    table = time_snr_shift(shift, torch.arange(1, 1001, dtype=torch.float64) / 1000).float()
    stride = len(table) / steps
    return torch.tensor([float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


@dataclass(frozen=True)
class Kind:
    """One kind of reference model: its data, schedule and call."""

    name: str
    model_class: type
    config_class: type
    weights: str
    prompts: Callable[[int, int], list[str]]  # (seed, count) -> prompts
    encoder: Callable[[], TextEncoder]
    sigmas: Callable[[int], torch.Tensor]  # steps -> steps + 1 sigmas
    timestep: Callable[[torch.Tensor], torch.Tensor]  # sigma -> the model's timestep input
    frames: bool  # latents carry a frame axis [B, C, T, H, W]

    def call(self, batch, sigma, context, pooled) -> tuple[tuple, dict]:
        """The model's positional and keyword arguments for the sampler's state."""
        if self.frames:
            return (batch, self.timestep(sigma), context), {}
        return (batch, self.timestep(sigma), context, pooled), {}


KINDS = {
    "flux": Kind("flux", Flux, FluxConfig, WEIGHTS, lambda seed, n: [s.prompt for s in data.scenes(seed, n)],
                 TextEncoder, flux_sigmas, lambda sigma: sigma, frames=False),
    "wan": Kind("wan", WanModel, WanConfig, WAN_WEIGHTS,
                lambda seed, n: [t.prompt for t in textures.textures(seed, n)], textures.text_encoder,
                discrete_flow_sigmas, lambda sigma: 1000.0 * sigma, frames=True),
}


def kind_of(model: torch.nn.Module) -> Kind:
    for kind in KINDS.values():
        if isinstance(model, kind.model_class):
            return kind
    raise TypeError(f"not a reference model: {type(model).__name__}")


def initial_noise(count: int, seed: int, size: int = 16) -> torch.Tensor:
    """Unit noise [count, 16, size, size]: sample i draws from seed + i, so it does not depend on the batch."""
    return torch.stack([torch.randn(LATENT_CHANNELS, size, size, generator=torch.Generator().manual_seed(seed + i))
                        for i in range(count)])


# evaluate(x, sigma, context, pooled, step_context) -> velocity; the default just runs the model
Evaluate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


@torch.no_grad()
def sample(model: torch.nn.Module, prompts: list[str], seed: int, steps: int = 24, cfg: float = 3.0, size: int = 16,
           evaluate: Optional[Evaluate] = None, encoder: Optional[TextEncoder] = None) -> torch.Tensor:
    """Latents [B, 16, size, size] (Wan: [B, 16, 1, size, size]) for ``prompts`` (one noise seed per
    batch, prompts share it offset by index). ``evaluate`` gets the sigmas as ``t`` and finds the
    model's own call in ``run["call"]``."""
    kind = kind_of(model)
    encoder = encoder or kind.encoder()
    context, pooled = encoder(prompts)
    if cfg != 1.0:
        empty_context, empty_pooled = encoder([""] * len(prompts))
        context, pooled = torch.cat([context, empty_context]), torch.cat([pooled, empty_pooled])
    noise = initial_noise(len(prompts), seed, size)
    if kind.frames:
        noise = noise.unsqueeze(2)
    sigmas = kind.sigmas(steps)
    x = noise * sigmas[0]
    run = {"sigmas": sigmas, "call": kind.call, "timestep_of": kind.timestep}
    for i in range(steps):
        sigma = sigmas[i]
        batch = torch.cat([x, x]) if cfg != 1.0 else x
        t = sigma.expand(batch.shape[0])
        if evaluate is None:
            args, kwargs = kind.call(batch, t, context, pooled)
            v = model(*args, **kwargs)
        else:
            v = evaluate(batch, t, context, pooled, run)
        if cfg != 1.0:
            cond, uncond = v.chunk(2)
            v = uncond + cfg * (cond - uncond)
        x = x + (sigmas[i + 1] - sigma) * v
    return x


def save_weights(model: torch.nn.Module, path: str, extra: Optional[dict] = None, half: bool = False) -> None:
    """``half``: store fp16 (half the file; loading computes in fp32 from the rounded weights)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.__dict__.items()}
    metadata = {"config": json.dumps(config), "kind": kind_of(model).name,
                **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    dtype = torch.float16 if half else torch.float32
    save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)


def load_reference(path: str = WEIGHTS) -> torch.nn.Module:
    """A bundled reference model (either kind; the file's metadata says which). ``path`` may also
    name a kind: ``"flux"`` or ``"wan"``."""
    from safetensors import safe_open

    path = KINDS[path].weights if path in KINDS else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no reference weights at {path}; train them with python -m hyca_core.reference.train")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        config = json.loads(metadata["config"])
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    kind = KINDS[metadata.get("kind", "flux")]
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    model = kind.model_class(kind.config_class(**config))
    model.load_state_dict(state)
    return model.eval()
