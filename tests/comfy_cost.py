"""What a full and a forecast step read, for models built with ComfyUI's own classes at full width:
FLUX.1-dev, Qwen-Image, HunyuanVideo (13B) and Wan 2.1 14B, one or two blocks per block list,
extrapolated to the full depth (``hyca_core.reference.cost`` does the counting).

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_cost.py --out cost.json
    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_cost.py --tiny        # checks the script (seconds)
    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_cost.py --speed --out speed.json   # on a GPU: time them
    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_cost.py --memory --out memory.json  # anchors on a 24 GB card

Each model is called as ComfyUI's ``BaseModel._apply_model`` calls it (its timestep from its model
sampling: FLUX and Qwen-Image take the sigma, HunyuanVideo and Wan 1000 sigma) on random bf16
weights; the anchors are scaled to one common output size per model (the token counts below keep
the target's ratio of image to text tokens, so the scaling is exact).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]

import torch  # noqa: E402
from comfy_env import comfyui_path, detected_config  # noqa: E402


@dataclass(frozen=True)
class Target:
    name: str
    comfy_class: str  # comfy.supported_models class
    family: str  # its tiny checkpoint (tests/fixtures): ComfyUI's detection fills the fields it requires
    unet: dict  # its unet_config at full width
    depth_keys: dict  # block list -> the unet_config key of its length
    latent: tuple  # the measured call's latent (B, C, [T,] H, W)
    text: tuple  # (tokens, features) of the measured call's context
    pooled: int = 0  # width of ``y`` (0: none)
    guidance: bool = False
    timestep_scale: float = 1.0  # model sampling: timestep = scale * sigma
    scale_to: str = ""  # the output the anchors are scaled to
    token_scale: int = 1  # its tokens over the measured call's (image and text alike)
    run_latent: tuple = ()  # ``--speed``: the latent of that output
    run_text: int = 0  # and its text tokens
    batch: int = 1  # one model call's batch: 2 with CFG
    # ``--memory``: the issue-26 size a user samples at (latent, text tokens per cond, conds per step)
    user: tuple = ()


FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
QWEN_IMAGE = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56), patch_size=2)
HUNYUAN_VIDEO = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                     hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=20, depth_single_blocks=40,
                     axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True,
                     byt5=False, meanflow=False)
WAN_14B = dict(image_model="wan2.1", model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16,
               out_dim=16, text_dim=4096, freq_dim=256, eps=1e-6, patch_size=(1, 2, 2), window_size=(-1, -1),
               qk_norm=True, cross_attn_norm=True)

TARGETS = (
    # 1024x1024: 4096 image and 512 text tokens, measured at 256 and 32
    Target("FLUX.1-dev", "Flux", "flux", FLUX_DEV, {"double_blocks": "depth", "single_blocks": "depth_single_blocks"},
           (1, 16, 32, 32), (32, 4096), pooled=768, guidance=True, scale_to="1024x1024, 512 text tokens", token_scale=16,
           run_latent=(1, 16, 128, 128), run_text=512, user=("1024x1024", (1, 16, 128, 128), 512, 1)),
    # 1024x1024: 4096 image and 256 text tokens, measured at 256 and 16
    Target("Qwen-Image", "QwenImage", "qwen_image", QWEN_IMAGE, {"transformer_blocks": "num_layers"}, (1, 16, 1, 32, 32), (16, 3584),
           scale_to="1024x1024, 256 text tokens", token_scale=16, run_latent=(1, 16, 1, 128, 128), run_text=256, batch=2,
           user=("1328x1328, CFG", (1, 16, 1, 166, 166), 256, 2)),
    # 960x544, 61 frames: 16 x 34 x 60 = 32640 image and 256 text tokens, measured at 510 and 4
    Target("HunyuanVideo", "HunyuanVideo", "hunyuan_video", HUNYUAN_VIDEO, {"double_blocks": "depth", "single_blocks": "depth_single_blocks"},
           (1, 16, 1, 34, 60), (4, 4096), pooled=768, guidance=True, timestep_scale=1000.0,
           scale_to="960x544, 61 frames, 256 text tokens", token_scale=64, run_latent=(1, 16, 16, 68, 120), run_text=256,
           user=("1280x720, 129 frames", (1, 16, 33, 90, 160), 256, 1)),
    # 832x480, 81 frames: 21 x 30 x 52 = 32760 image tokens (Wan caches image tokens only), measured at 390
    Target("Wan 2.1 14B", "WAN21_T2V", "wan", WAN_14B, {"blocks": "num_layers"}, (1, 16, 1, 30, 52), (512, 4096),
           timestep_scale=1000.0, scale_to="832x480, 81 frames", token_scale=84, run_latent=(1, 16, 21, 60, 104),
           run_text=512, batch=2, user=("832x480, 81 frames, CFG", (1, 16, 21, 60, 104), 512, 2)),
)


def tiny(target: Target) -> Target:
    """The same model kind at a tiny width: checks the script in seconds."""
    narrow = {"hidden_size": 64, "num_heads": 2, "axes_dim": [8, 12, 12], "attention_head_dim": 32,
              "num_attention_heads": 2, "axes_dims_rope": (8, 12, 12), "dim": 64, "ffn_dim": 128,
              "vec_in_dim": 32, "context_in_dim": 32, "joint_attention_dim": 32, "text_dim": 32}
    unet = {k: narrow.get(k, v) for k, v in target.unet.items()}
    text = (target.text[0] if target.text[0] < 64 else 8, 32)
    latent = (*target.latent[:-2], 8, 8)
    return Target(target.name + " (tiny)", target.comfy_class, target.family, unet, target.depth_keys, latent, text,
                  32 if target.pooled else 0, target.guidance, target.timestep_scale, run_latent=latent,
                  run_text=text[0], batch=target.batch, user=("tiny", latent, text[0], target.user[3]))


def subject(target: Target, dtype=torch.bfloat16, batch: int = 1, device: str = "cpu"):
    from hyca_core.reference.subject import Subject

    def build(size: dict) -> torch.nn.Module:
        unet = dict(target.unet, **{target.depth_keys[name]: n for name, n in size.items()})
        supported = detected_config(target.family, unet)
        assert type(supported).__name__ == target.comfy_class, type(supported).__name__
        supported.set_inference_dtype(dtype, None)
        with torch.device(device):
            model = supported.get_model({}, device=device).diffusion_model
        g = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():  # fan-in-scaled random weights: speed and bytes do not depend on them
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype)
                        * (p.shape[1] ** -0.5 if p.dim() >= 2 else 0.1))
        return model.to(device).eval().requires_grad_(False)

    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *target.latent[1:]), generator=g).to(device, dtype)
    kwargs = {"context": torch.randn(batch, *target.text, generator=g).to(device, dtype)}
    if target.pooled:
        kwargs["y"] = torch.randn(batch, target.pooled, generator=g).to(device, dtype)
    if target.guidance:
        kwargs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)

    def call(model, x, timestep):  # as BaseModel._apply_model calls the diffusion model
        return (x, timestep), dict(kwargs)

    blocks = {name: target.unet[key] for name, key in target.depth_keys.items()}
    patch = target.unet.get("patch_size", 2)
    patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
    measured = (target.latent[-1] // patch) * (target.latent[-2] // patch)
    return Subject(target.name, build, call, x, blocks, tokens=measured * target.token_scale, measured_tokens=measured,
                   timestep_of=lambda sigma: (sigma * target.timestep_scale).float())


CARD_GIB = 24.0
CONTEXT_GIB = 0.5  # the CUDA context and what else a card holds before a model loads


def memory_rows(target: Target, precisions=("model", "int8"), anchors: int = 2) -> list[dict]:
    """The anchors' bytes at the user's size through ComfyUI's classes at full width and depth (built
    on the meta device: no weights), ``hyca_core.model.memory.estimate`` as HyCa Apply makes it before
    the first step (equal to the bytes held at tiny width, tests/comfyui/test_comfy_memory.py), and
    whether they fit a 24 GB card beside the model in fp8 and ComfyUI's own inference reserve
    (``BaseModel.memory_required`` as a GPU with flash attention computes it, one cond per call)."""
    import comfy.model_management

    from hyca_core.model import families, memory
    from hyca_core.model.session import FREE_MEMORY_SHARE

    label, latent, text, conds = target.user
    supported = detected_config(target.family, target.unet)
    supported.set_inference_dtype(torch.bfloat16, None)
    with torch.device("meta"):
        base = supported.get_model({}, device="meta")
    model = base.diffusion_model
    family = families.detect(model)
    weights = sum(p.numel() for p in model.parameters())  # fp8: a byte each
    flash, comfy.model_management.pytorch_attention_flash_attention = (
        comfy.model_management.pytorch_attention_flash_attention, lambda: True)
    try:
        reserve = base.memory_required(list(latent), {"c_crossattn": [(1, text, 1)]})
    finally:
        comfy.model_management.pytorch_attention_flash_attention = flash
    free = (CARD_GIB - CONTEXT_GIB) * memory.GiB - weights  # what ComfyUI reports once the model is in
    room = free - reserve
    shape = memory.SampleShape(latent, (text,) * conds, torch.bfloat16)
    rows = []
    for precision in precisions:
        sizes = {g: memory.estimate(model, family, g, shape, precision, reads=lambda f: anchors).bytes
                 for g in ("module", "block", "stack")}
        budget = memory.budget_bytes(0, free, FREE_MEMORY_SHARE)
        auto = memory.choose("module", lambda g: memory.Estimate(g, sizes[g]), budget)[0].granularity
        rows.append({"model": target.name, "size": label, "conds": conds, "image_tokens": families.target_tokens(
            latent, getattr(model, "patch_size", 2)), "text_tokens": text, "precision": precision, "anchors": anchors,
            "fp8_weights_bytes": weights, "inference_reserve_bytes": int(reserve), "free_after_model_bytes": int(free),
            "room_bytes": int(room), "auto_budget_bytes": budget, "auto_from_module": auto,
            **{f"{g}_bytes": b for g, b in sizes.items()}, **{f"{g}_fits": b <= room for g, b in sizes.items()}})
    return rows


def memory_table(rows: list[dict]) -> str:
    gib = lambda n: f"{n / 2 ** 30:.1f}"  # noqa: E731
    mark = lambda row, g: f"{gib(row[g + '_bytes'])} {'yes' if row[g + '_fits'] else 'no'}"  # noqa: E731
    lines = ["| model, size | anchors | fp8 weights + reserve, GiB | room, GiB | module | block | stack / final "
             "| auto (module map) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        precision = "bf16" if r["precision"] == "model" else r["precision"]
        lines.append(f"| {r['model']}, {r['size']} | {r['anchors']} x {precision} | {gib(r['fp8_weights_bytes'])} + "
                     f"{gib(r['inference_reserve_bytes'])} | {gib(r['room_bytes'])} | {mark(r, 'module')} | "
                     f"{mark(r, 'block')} | {mark(r, 'stack')} | {r['auto_from_module']} |")
    return "\n".join(lines)


def speed(target: Target, args) -> list[dict]:
    """End-to-end times at the full depth and the target's size (``hyca_core.reference.speed``)."""
    from hyca_core.reference import speed as reference_speed

    at_size = Target(**{**target.__dict__, "latent": target.run_latent, "text": (target.run_text, target.text[1])})
    s = subject(at_size, batch=target.batch, device=args.device)
    model = s.build({name: target.unet[key] for name, key in target.depth_keys.items()})
    rows = reference_speed.measure(model, s, args, echo=lambda line: print(f"{target.name}: {line}"))
    del model
    return [{"model": target.name, **row} for row in rows]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny widths: checks the script, not the figures")
    parser.add_argument("--models", nargs="*", help="names to count (default: all)")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--speed", action="store_true",
                        help="time sampling at the full depth and size instead of counting (a GPU: --device cuda)")
    parser.add_argument("--memory", action="store_true",
                        help="the anchors' bytes at each model's user size, per granularity and precision, on a 24 GB card")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--intervals", type=int, nargs="+", default=[5, 6, 7, 8])
    parser.add_argument("--granularities", nargs="+", default=["module", "block", "stack"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if comfyui_path() is None:
        sys.exit("no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, comfyui_path())
    import comfy.options

    # ComfyUI's PyTorch attention (scaled_dot_product ops) on the CPU: the counter sees attention there
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", "--use-pytorch-cross-attention"]
    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    sys.argv = argv
    from hyca_core.reference.cost import finish, measure

    rows = []
    for target in TARGETS:
        if args.models and target.name not in args.models:
            continue
        t = tiny(target) if args.tiny else target
        if args.memory:
            rows += [row for anchors in (2, 3) for row in memory_rows(target if not args.tiny else t, anchors=anchors)]
            continue
        if args.speed:
            rows += speed(t, args)
            continue
        print(f"{t.name}: {', '.join(f'{n} {k}' for k, n in t.unet.items() if k in t.depth_keys.values())} blocks, "
              f"measured at latent {t.latent}, {t.text[0]} text tokens; anchors scaled to {target.scale_to or 'as measured'}")
        rows += measure(subject(t))
    if args.memory:
        print(memory_table(rows))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
        return
    finish(rows, args.out, table=not args.speed)


if __name__ == "__main__":
    main()
