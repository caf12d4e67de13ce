"""A model to benchmark, and calling it under HyCa as ComfyUI's DIFFUSION_MODEL wrapper would.

The cost counter (``cost``) and the speed script (``speed``) take any ``Subject``: the reference
MMDiT here, or models built with ComfyUI's own classes (``tests/comfy_cost.py``), which this
package never imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from ..model.driver import install
from ..model.session import ApplyConfig
from .model import Flux, FluxConfig


@dataclass
class Subject:
    """A model built at full width with any number of blocks, and one call of it."""

    name: str
    build: Callable[[dict], torch.nn.Module]  # blocks per block list -> the diffusion model
    call: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple]  # (model, x, timestep) -> (args, kwargs)
    latent: torch.Tensor  # an input of the call's shape
    blocks: dict  # the full model's blocks per block list, e.g. {"double_blocks": 19, "single_blocks": 38}
    tokens: int = 0  # image tokens the anchor and FLOPs figures are scaled to (0: as measured)
    measured_tokens: int = 0  # image tokens of ``call``
    timestep_of: Callable = field(default=lambda sigma: sigma)  # sigma -> the call's timestep

    def sizes(self) -> list[dict]:
        """One block in every list, then two in each list in turn: enough to extrapolate linearly."""
        one = {name: 1 for name in self.blocks}
        return [one] + [{**one, name: 2} for name in self.blocks]

    def to(self, device, dtype=None) -> "Subject":
        return replace(self, latent=self.latent.to(device, dtype or self.latent.dtype))


class CachedCalls:
    """Calls of one model under one HyCa run state (a fresh one per run), installed as HyCa Apply does."""

    def __init__(self, model: torch.nn.Module, subject: Subject, config: ApplyConfig):
        self.model, self.subject = model, subject
        self.installed = install(model, config, subject.timestep_of)
        self.state = self.installed.state

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, sigmas: torch.Tensor, uuids=("c",)):
        args, kwargs = self.subject.call(self.model, x, self.subject.timestep_of(sigma.reshape(1)).expand(x.shape[0]))
        return self.installed(args, kwargs, sigma, sigmas, uuids, cond_or_uncond=(0,))

    @property
    def stream(self):
        return next(iter(self.state.run.streams.values()))

    def close(self) -> list[dict]:
        return self.installed.close()


def plain_call(model: torch.nn.Module, subject: Subject, x: torch.Tensor, sigma: torch.Tensor):
    args, kwargs = subject.call(model, x, subject.timestep_of(sigma.reshape(1)).expand(x.shape[0]))
    return model(*args, **kwargs)


def flux_subject(config: FluxConfig, latent: int, tokens: int, dtype: torch.dtype, name: str = "FLUX.1-dev",
                 batch: int = 1, device: Optional[str] = None) -> Subject:
    """The reference MMDiT (FLUX.1's architecture, ComfyUI's parameter names) at ``config``'s width."""
    g = torch.Generator().manual_seed(0)
    c = config
    x = torch.randn(batch, c.in_channels, latent, latent, generator=g).to(device, dtype)
    context = torch.randn(batch, tokens, c.context_in_dim, generator=g).to(device, dtype)
    pooled = torch.randn(batch, c.vec_in_dim, generator=g).to(device, dtype)
    guidance = torch.full((batch,), 3.5, device=device, dtype=dtype)

    def build(size: dict) -> Flux:
        sized = replace(config, depth=size["double_blocks"], depth_single_blocks=size["single_blocks"])
        with torch.device(device or "cpu"):
            model = Flux(sized)
        return model.to(dtype).eval().requires_grad_(False)

    def call(model, x, timestep):
        return (x, timestep.to(x.dtype), context[:x.shape[0]], pooled[:x.shape[0]]), {"guidance": guidance[:x.shape[0]]}

    return Subject(name, build, call, x, {"double_blocks": c.depth, "single_blocks": c.depth_single_blocks},
                   measured_tokens=(latent // c.patch_size) ** 2)

