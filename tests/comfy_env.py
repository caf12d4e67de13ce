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

# Newer families (ComfyUI 0.26's classes): FLUX.2 / Klein, Z-Image (NextDiT with Z-Image's modulation, at
# the least width it takes, 256; ComfyUI's ZImage class is matched at width 3840, so it loads as Lumina2), Qwen-Image-Edit
# 2511 (its checkpoint's marker key), HunyuanVideo 1.5, Wan 2.2 5B, Kandinsky 5.
FLUX2 = dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=32, hidden_size=64,
             mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 8, 8, 8], theta=2000, patch_size=1,
             qkv_bias=False, guidance_embed=True, global_modulation=True, mlp_silu_act=True, ops_bias=False,
             default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3])
ZIMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=32, n_layers=3,
              n_refiner_layers=1, qk_norm=True, n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48], axes_lens=[64, 64, 64],
              rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0)
HUNYUAN15 = dict(image_model="hunyuan_video", in_channels=65, out_channels=32, vec_in_dim=None, context_in_dim=32,
                 hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=0, axes_dim=[8, 12, 12],
                 theta=256, patch_size=[1, 1, 1], qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False,
                 use_cond_type_embedding=True, vision_in_dim=1152, meanflow_sum=True)
KANDINSKY5 = dict(image_model="kandinsky5", in_visual_dim=16, out_visual_dim=16, in_text_dim=32, in_text_dim2=32,
                  time_dim=32, model_dim=64, ff_dim=128, visual_embed_dim=16 * 4 + 16 * 4 + 4, patch_size=(1, 2, 2),
                  num_text_blocks=1, num_visual_blocks=3, axes_dims=(8, 12, 12))

HAND_CONFIGS = {"flux": ("Flux", FLUX), "qwen_image": ("QwenImage", QWEN), "hunyuan_video": ("HunyuanVideo", HUNYUAN),
           "wan": ("WAN21_T2V", WAN), "chroma": ("Chroma", CHROMA), "ltxv": ("LTXV", LTXV),
                "flux2": ("Flux2", FLUX2), "zimage": ("Lumina2", ZIMAGE), "qwen_image_2511": ("QwenImage", QWEN),
                "hunyuan_video15": ("HunyuanVideo15", HUNYUAN15), "wan22": ("WAN22_T2V", dict(WAN, in_dim=48, out_dim=48)),
                "kandinsky5": ("Kandinsky5", KANDINSKY5)}
# keys of a checkpoint that are markers, not weights (detection reads them)
MARKER_KEYS = {"qwen_image_2511": {"__index_timestep_zero__": []}}


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
    "flux2": dict(num_heads=2, axes_dim=[8, 8, 8, 8]),
    "zimage": dict(n_refiner_layers=1, n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48], axes_lens=[64, 64, 64],
                   rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0),
    "hunyuan_video15": dict(mlp_ratio=2.0, num_heads=2, axes_dim=[8, 12, 12]),
    "kandinsky5": dict(in_text_dim=32, in_text_dim2=32, axes_dims=(8, 12, 12)),
}
TINY_WIDTHS["qwen_image_2511"] = TINY_WIDTHS["qwen_image"]
TINY_WIDTHS["wan22"] = TINY_WIDTHS["wan"]


def manifest(family: str) -> dict:
    import json

    return json.loads(MANIFESTS.read_text())[family]["keys"]


# what detection must have read off a checkpoint for the model to be that family (older ComfyUI
# loads Qwen-Image-Edit-2511 as plain Qwen-Image)
DETECTED = {"qwen_image_2511": {"default_ref_method": "index_timestep_zero"}}


def tiny_config(family: str):
    """The family's tiny model config as this ComfyUI loads a checkpoint: its own detection reads the
    manifest's keys and shapes (filling every field this version requires), then ``TINY_WIDTHS``.
    RuntimeError when this ComfyUI does not load it as that family (an older one)."""
    model_config = detected_config(family, TINY_WIDTHS[family])
    expected = HAND_CONFIGS[family][0]
    if type(model_config).__name__ != expected:
        raise RuntimeError(f"this ComfyUI loads the tiny {family} checkpoint as {type(model_config).__name__}, "
                           f"not {expected}")
    for key, value in DETECTED.get(family, {}).items():
        if model_config.unet_config.get(key) != value:
            raise RuntimeError(f"this ComfyUI's detection gives {family} no {key}={value!r}")
    return model_config


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
    try:
        model = model_config.get_model({})
    except TypeError as exc:  # its model class is older than the family (0.3.64's NextDiT: no Z-Image)
        raise RuntimeError(f"this ComfyUI's {type(model_config).__name__} cannot build {family}: {exc}") from exc
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
    if family in ("flux", "flux2", "hunyuan_video", "hunyuan_video15", "chroma", "kandinsky5"):  # CLIPTextEncode's conds carry it; Chroma and FLUX.2 ignore it
        extra["pooled_output"] = torch.randn(1, 32, generator=g)
    if family == "ltxv":
        extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)  # integer: the model makes it additive
    return [[torch.randn(1, tokens, 32, generator=g), extra]]


def latent(family: str, batch: int = 1, size: int = 16, frames: int = 3):
    import torch

    channels = {"wan22": 48, "hunyuan_video15": 32, "flux2": 128}.get(family, 16)
    if family in ("hunyuan_video", "wan", "wan22", "hunyuan_video15", "kandinsky5"):
        return torch.zeros(batch, channels, frames, size, size)
    if family == "flux2":
        return torch.zeros(batch, channels, size // 2, size // 2)  # FLUX.2's VAE: 16x smaller, patch 1
    if family == "ltxv":
        return torch.zeros(batch, 128, frames, size // 4, size // 4)  # LTXV's VAE: 128 channels, 32x smaller
    if family in ("qwen_image", "qwen_image_2511"):
        return torch.zeros(batch, 16, 1, size, size)  # Qwen-Image uses a video VAE: one frame
    return torch.zeros(batch, 16, size, size)
