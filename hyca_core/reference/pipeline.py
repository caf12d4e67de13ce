"""Sampling the reference model: FLUX's shifted flow-matching schedule, Euler steps, CFG, and a
hook for caching (``evaluate``), plus loading and saving the bundled weights."""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

import torch

from .data import LATENT_CHANNELS, TextEncoder
from .model import Flux, FluxConfig

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "reference-flux.safetensors")
SHIFT = 1.15  # ComfyUI's default for FLUX (ModelSamplingFlux)


def flux_sigmas(steps: int, shift: float = SHIFT) -> torch.Tensor:
    """steps+1 descending sigmas from 1 to 0, time-shifted as FLUX's sampling does."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    inner = (1.0 / t[:-1] - 1.0).clamp_min(0.0)
    sigmas = math.exp(shift) / (math.exp(shift) + inner)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def initial_noise(count: int, seed: int, size: int = 16) -> torch.Tensor:
    """Unit noise [count, 16, size, size]: sample i draws from seed + i, so it does not depend on the batch."""
    return torch.stack([torch.randn(LATENT_CHANNELS, size, size, generator=torch.Generator().manual_seed(seed + i))
                        for i in range(count)])


# evaluate(x, sigma, context, pooled, step_context) -> velocity; the default just runs the model
Evaluate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


@torch.no_grad()
def sample(model: Flux, prompts: list[str], seed: int, steps: int = 24, cfg: float = 3.0, size: int = 16,
           evaluate: Optional[Evaluate] = None, encoder: Optional[TextEncoder] = None) -> torch.Tensor:
    """Latents [B, 16, size, size] for ``prompts`` (one noise seed per batch, prompts share it offset by index)."""
    encoder = encoder or TextEncoder()
    context, pooled = encoder(prompts)
    if cfg != 1.0:
        empty_context, empty_pooled = encoder([""] * len(prompts))
        context, pooled = torch.cat([context, empty_context]), torch.cat([pooled, empty_pooled])
    noise = initial_noise(len(prompts), seed, size)
    sigmas = flux_sigmas(steps)
    x = noise * sigmas[0]
    run = {"sigmas": sigmas}
    for i in range(steps):
        sigma = sigmas[i]
        batch = torch.cat([x, x]) if cfg != 1.0 else x
        t = sigma.expand(batch.shape[0])
        if evaluate is None:
            v = model(batch, t, context, pooled)
        else:
            v = evaluate(batch, t, context, pooled, run)
        if cfg != 1.0:
            cond, uncond = v.chunk(2)
            v = uncond + cfg * (cond - uncond)
        x = x + (sigmas[i + 1] - sigma) * v
    return x


def save_weights(model: Flux, path: str, extra: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.__dict__.items()}
    metadata = {"config": json.dumps(config), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)


def load_reference(path: str = WEIGHTS) -> Flux:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no reference weights at {path}; train them with python -m hyca_core.reference.train")
    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    config["axes_dim"] = tuple(config["axes_dim"])
    model = Flux(FluxConfig(**config))
    model.load_state_dict(state)
    return model.eval()
