"""Train a reference model with rectified flow: the FLUX-style MMDiT on rendered shape scenes, or
the Wan-layout DiT on procedural textures.

    python -m hyca_core.reference.train [--model flux|wan] [--minutes 25] [--out PATH]

Runs on 2 CPU cores within the time limit (faster on a GPU); writes EMA weights to the bundled
weights file and a sample grid next to it. Deterministic given the seed (up to thread scheduling).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time

import torch

from . import textures
from .data import Scene, encode, render
from .model import Flux, FluxConfig
from .pipeline import KINDS, WAN_SHIFT, save_weights, time_snr_shift
from .wan import WanConfig, WanModel

CONFIG = FluxConfig(hidden_size=128, num_heads=4, depth=2, depth_single_blocks=4, axes_dim=(8, 12, 12),
                    mlp_ratio=2.0, guidance_embed=False)
WAN_CONFIG = WanConfig(dim=256, ffn_dim=512, num_layers=4, text_dim=32)


def init_weights(model: torch.nn.Module, seed: int) -> None:
    if isinstance(model, WanModel):
        return init_wan(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale") and p.dim() == 1:
                p.fill_(1.0)  # RMSNorm gains
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            else:
                p.zero_()
        # adaLN-zero: blocks start as the identity, which trains stably
        for block in list(model.double_blocks) + list(model.single_blocks):
            for mod in (getattr(block, "img_mod", None), getattr(block, "txt_mod", None), getattr(block, "modulation", None)):
                if mod is not None:
                    mod.lin.weight.zero_()
        model.final_layer.linear.weight.mul_(0.1)


def init_wan(model: WanModel, seed: int) -> None:
    """Fan-in scaled weights; every gate, the modulation offsets and the cross-attention output at
    zero, so each block starts as the identity (adaLN-zero), which trains stably."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel()) ** -0.5)
            elif name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
                p.fill_(1.0)
            else:
                p.zero_()
        model.time_projection[1].weight.zero_()
        for block in model.blocks:
            block.cross_attn.o.weight.zero_()
        model.head.head.weight.mul_(0.1)


def batch(rng, encoder, size, drop):
    scenes = [Scene.sample(rng) for _ in range(size)]
    images = torch.stack([render(s) for s in scenes])
    prompts = [("" if rng.random() < drop else s.prompt) for s in scenes]
    context, pooled = encoder(prompts)
    return encode(images), context, pooled


def texture_batch(rng, encoder, size, drop):
    items = [textures.Texture.sample(rng) for _ in range(size)]
    images = torch.stack([textures.render(t) for t in items])
    context, _ = encoder([("" if rng.random() < drop else t.prompt) for t in items])
    return encode(images).unsqueeze(2), context, None


def training_sigmas(kind: str, count: int) -> torch.Tensor:
    """Logit-normal sigmas as SD3 / FLUX train; the Wan reference's shifted as it samples."""
    sigma = torch.sigmoid(torch.randn(count))
    return time_snr_shift(WAN_SHIFT, sigma) if kind == "wan" else sigma


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.reference.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=tuple(KINDS), default="flux", help="which reference model (default flux)")
    parser.add_argument("--out", help="weights file (default: the bundled one of --model)")
    parser.add_argument("--resume", help="start from these weights (a file this script wrote) instead of at random")
    parser.add_argument("--half", action="store_true", help="store the weights in fp16 (half the file)")
    args = parser.parse_args(argv)
    kind = KINDS[args.model]
    out = args.out or kind.weights
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    encoder = kind.encoder()
    model = WanModel(WAN_CONFIG) if args.model == "wan" else Flux(CONFIG)
    make_batch = texture_batch if args.model == "wan" else batch
    init_weights(model, args.seed)
    done = 0
    if args.resume:
        from safetensors import safe_open

        with safe_open(args.resume, framework="pt") as f:
            model.load_state_dict({k: f.get_tensor(k).float() for k in f.keys()})
            done = int(json.loads(f.metadata().get("steps", "0")))
        rng = random.Random(args.seed + done)  # new data, not the first run's again
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    params = sum(p.numel() for p in model.parameters())
    print(f"reference model: {params / 1e6:.2f} M parameters; training for {args.minutes} min, batch {args.batch}")
    started = time.perf_counter()
    budget = args.minutes * 60
    step, losses = 0, []
    while step < args.max_steps:
        elapsed = time.perf_counter() - started
        if elapsed > budget:
            break
        progress = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0, context, pooled = make_batch(rng, encoder, args.batch, drop=0.1)
        noise = torch.randn_like(x0)
        sigma = training_sigmas(args.model, x0.shape[0])
        s = sigma.view(-1, *[1] * (x0.ndim - 1))
        xt = (1 - s) * x0 + s * noise
        call_args, _ = kind.call(xt, sigma, context, pooled)
        loss = torch.nn.functional.mse_loss(model(*call_args), noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            print(f"step {step}  loss {sum(losses[-100:]) / 100:.4f}  lr {lr:.2e}  {elapsed / 60:.1f} min", flush=True)
    save_weights(ema, out, {"steps": done + step, "batch": args.batch, "seed": args.seed,
                                 "final_loss": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 5)},
                 half=args.half)
    print(f"wrote {out} after {step} steps ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
