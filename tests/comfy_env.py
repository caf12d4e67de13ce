"""Finding a real ComfyUI for the integration tests, and building tiny random-weight models with it.

ComfyUI is found through ``COMFYUI_PATH``, or two folders up when this pack sits in
``ComfyUI/custom_nodes/``. Without one, ``require_comfyui()`` skips the calling test module with
the reason. Models load as checkpoints do: ComfyUI's own detection reads a tiny checkpoint's key
manifest (``tests/fixtures/tiny_checkpoints.json``), so fields a newer ComfyUI requires come from it;
weights are fan-in-scaled random: with tiny weights every block is nearly the identity and caching
errors would be invisible.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "tests" / "fixtures" / "tiny_checkpoints.json"


def comfyui_path():
    candidates = [os.environ.get("COMFYUI_PATH"), str(ROOT.parent.parent)]
    for candidate in candidates:
        if candidate and (Path(candidate) / "comfy" / "model_patcher.py").is_file():
            return str(Path(candidate).resolve())
    return None


def require_comfyui():
    import pytest  # here, not at the top: the test-only nodes import this module in a server without pytest

    path = comfyui_path()
    if path is None:
        pytest.skip("no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout (see README, 'Integration tests')",
                    allow_module_level=True)
    try:
        import torchvision  # noqa: F401  (ComfyUI imports it; the CPU-only CI torch has none)
    except ImportError:
        pytest.skip("ComfyUI needs torchvision, which this Python lacks: run the integration tests with "
                    "ComfyUI's own Python (see README, 'Integration tests')", allow_module_level=True)
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options

    if "comfy.cli_args" not in sys.modules:
        argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401
        sys.argv = argv
    return path


# The hand-written tiny configs the manifests were written from (tools/tiny_checkpoints.py).
FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64,
            mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=3, axes_dim=[8, 12, 12], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=True)
QWEN = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=3, attention_head_dim=32,
            num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 12, 12), patch_size=2)
HUNYUAN = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
               hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
               theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False)

WAN = dict(image_model="wan2.1", model_type="t2v", dim=64, ffn_dim=128, num_heads=2, num_layers=3, in_dim=16,
           out_dim=16, text_dim=32, freq_dim=256, eps=1e-6, patch_size=(1, 2, 2), window_size=(-1, -1), qk_norm=True,
           cross_attn_norm=True)
CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64, mlp_ratio=2.0,
              num_heads=2, depth=2, depth_single_blocks=3, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
              qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=128, n_layers=2)

LTXV = dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=32, num_attention_heads=2,
            caption_channels=32, num_layers=3)  # no family of HyCa's: cached through its block list

HAND_CONFIGS = {"flux": ("Flux", FLUX), "qwen_image": ("QwenImage", QWEN), "hunyuan_video": ("HunyuanVideo", HUNYUAN),
           "wan": ("WAN21_T2V", WAN), "chroma": ("Chroma", CHROMA), "ltxv": ("LTXV", LTXV)}


# The widths real checkpoints of a family share, which detection therefore fixes (heads from a
# 128-wide head, rope axes, the text encoder's width ...): the only fields a tiny model overrides.
TINY_WIDTHS = {
    "flux": dict(hidden_size=64, context_in_dim=32, mlp_ratio=2.0, num_heads=2, axes_dim=[8, 12, 12]),
    "qwen_image": dict(attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                       axes_dims_rope=(8, 12, 12)),
    "hunyuan_video": dict(vec_in_dim=32, mlp_ratio=2.0, num_heads=2, axes_dim=[8, 12, 12]),
    "wan": dict(num_heads=2, text_dim=32),
    "chroma": dict(hidden_size=64, context_in_dim=32, mlp_ratio=2.0, num_heads=2, axes_dim=[8, 12, 12], out_dim=64,
                   hidden_dim=128, n_layers=2),
    "ltxv": dict(attention_head_dim=32, num_attention_heads=2, caption_channels=32),
}


def manifest(family: str) -> dict:
    import json

    return json.loads(MANIFESTS.read_text())[family]["keys"]


def tiny_config(family: str):
    """The family's tiny model config as this ComfyUI loads a checkpoint: its own detection reads the
    manifest's keys and shapes (filling every field this version requires), then ``TINY_WIDTHS``."""
    return detected_config(family, TINY_WIDTHS[family])


def detected_config(family: str, widths: dict):
    """``comfy.supported_models`` config of a family at the given widths: this ComfyUI's detection of
    the family's tiny checkpoint, with ``widths`` over it (full-width models for the cost script)."""
    import torch
    import comfy.model_detection

    state_dict = {key: torch.zeros(shape) for key, shape in manifest(family).items()}
    config = comfy.model_detection.detect_unet_config(state_dict, "")
    if config is None:
        raise RuntimeError(f"this ComfyUI does not detect the tiny {family} checkpoint (tests/fixtures)")
    config.update(widths)
    model_config = comfy.model_detection.model_config_from_unet_config(config, state_dict)
    if model_config is None:
        raise RuntimeError(f"this ComfyUI has no model class for the detected {family} config {config}")
    return model_config


def build(family: str, seed: int = 0, dtype=None):
    """A tiny random ModelPatcher of a family, on the CPU, loaded through ComfyUI's detection."""
    import torch
    import comfy.model_patcher

    model_config = tiny_config(family)
    model_config.set_inference_dtype(dtype or torch.float32, None)
    model = model_config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def conditioning(family: str, seed: int = 1, tokens: int = 8):
    import torch

    g = torch.Generator().manual_seed(seed)
    extra = {"guidance": 3.5}
    if family in ("flux", "hunyuan_video", "chroma"):  # Chroma's model asks for it and ignores it
        extra["pooled_output"] = torch.randn(1, 32, generator=g)
    if family == "ltxv":
        extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)  # integer: the model makes it additive
    return [[torch.randn(1, tokens, 32, generator=g), extra]]


def latent(family: str, batch: int = 1, size: int = 16, frames: int = 3):
    import torch

    if family in ("hunyuan_video", "wan"):
        return torch.zeros(batch, 16, frames, size, size)
    if family == "ltxv":
        return torch.zeros(batch, 128, frames, size // 4, size // 4)  # LTXV's VAE: 128 channels, 32x smaller
    if family == "qwen_image":
        return torch.zeros(batch, 16, 1, size, size)  # Qwen-Image uses a video VAE: one frame
    return torch.zeros(batch, 16, size, size)
