"""The bundled reference model: a small FLUX-compatible MMDiT, trainable on a CPU."""

from .model import Flux, FluxConfig

__all__ = ["Flux", "FluxConfig"]
