"""Blocks HyCa routes itself (``hyca_core.model.routes``), on a small module that follows Qwen-Image 2.1
(comfy/ldm/qwen_image21/model.py at 08f68f09 of Comfy-Org/ComfyUI, newer than 0.26; read, not
copied): one list of single-stream blocks called as ``block(x, mod, pe, attn_fn, prefix_len,
transformer_options)`` with the residual added in place, and a cache of the text rows' K/V that is
filled by running the text rows alone through every block on the first step, and turned off when
anything hooks the blocks (any ``patches_replace["dit"]`` entry). Lumina 2 / Z-Image and Kandinsky 5
run the same routing in a real ComfyUI 0.26 (``tests/comfyui/test_comfy_models.py``).
"""

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from hyca_core.model import families, routes
from hyca_core.model import session
from hyca_core.forecast.schedule import Schedule
from support import step_options

D, TEXT, IMAGE, BLOCKS, STEPS = 16, 5, 12, 4, 12
SIGMAS = torch.linspace(1.0, 0.0, STEPS + 1)


class Block21(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x, mod, pe, attn_fn, prefix_len, transformer_options={}):
        (scale0, gate0), (scale, gate) = mod  # text rows modulate from t = 0, image rows from t

        def rows(a, b):
            return torch.cat([a.expand(x.shape[0], prefix_len, D), b.expand(x.shape[0], x.shape[1] - prefix_len, D)], 1)
        scale, gate = rows(scale0, scale), rows(gate0, gate)
        h = nn.functional.layer_norm(x, (D,)) * (1 + scale)
        x.add_(attn_fn(self.to_q(h), self.to_k(h), self.to_v(h)) * gate)  # in place, as the real block
        x.add_(self.mlp(nn.functional.layer_norm(x, (D,))) * gate)
        return x


def causal_prefix_attention(prefix_len, cache=None, index=0):
    """Text rows see text rows only; image rows see everything. Stores the text rows' K/V."""
    def attn(q, k, v):
        if cache is not None:
            cache[index] = (k[:, :prefix_len].clone(), v[:, :prefix_len].clone())
        n = q.shape[1]
        mask = torch.ones(n, n, dtype=torch.bool)
        mask[:prefix_len, prefix_len:] = False
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn


def cached_prefix_attention(prefix_k, prefix_v):
    def attn(q, k, v):
        return nn.functional.scaled_dot_product_attention(q, torch.cat([prefix_k, k], 1), torch.cat([prefix_v, v], 1))
    return attn


class QwenImage21Transformer2DModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.txt_in, self.img_in, self.proj_out = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.modulation = nn.Linear(1, 2 * D)
        self.transformer_blocks = nn.ModuleList(Block21() for _ in range(BLOCKS))
        self.prefix_cache_enabled, self.prefix_cache = True, None
        self.prefix_passes = 0  # blocks run on the text rows alone (filling the cache)
        for p in self.parameters():
            nn.init.normal_(p, std=(p.shape[1] ** -0.5) if p.dim() > 1 else 0.1)

    def forward(self, x, t, context, transformer_options):
        hidden = torch.cat([self.txt_in(context), self.img_in(x)], dim=1)
        prefix_len = context.shape[1]
        mod = (self.modulation(torch.zeros(1, 1, 1)).chunk(2, dim=-1), self.modulation(t.view(-1, 1, 1)).chunk(2, dim=-1))
        blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
        cache = self.prefix_cache if self.prefix_cache_enabled and not blocks_replace else None
        if cache is not None:
            if not cache:  # the first step fills it: the text rows alone through every block
                prefix = hidden[:, :prefix_len]
                for i, block in enumerate(self.transformer_blocks):
                    self.prefix_passes += 1
                    prefix = block(prefix, mod, None, causal_prefix_attention(prefix_len, cache, i), prefix_len,
                                   transformer_options)
            hidden, prefix_len = hidden[:, prefix_len:], 0
        for i, block in enumerate(self.transformer_blocks):
            attn = cached_prefix_attention(*cache[i]) if cache is not None else causal_prefix_attention(prefix_len)
            if ("single_block", i) in blocks_replace:
                def block_wrap(args, block=block, attn=attn):
                    return {"img": block(args["img"], mod, None, attn, prefix_len, args["transformer_options"])}
                hidden = blocks_replace[("single_block", i)]({"img": hidden, "transformer_options": transformer_options},
                                                             {"original_block": block_wrap})["img"]
            else:
                hidden = block(hidden, mod, None, attn, prefix_len, transformer_options)
        return self.proj_out(hidden[:, prefix_len:])


@contextmanager
def twins_in_place(model, family):
    """What ComfyUI's object patches do while the model is loaded."""
    originals = list(model.transformer_blocks)
    for name, twin in routes.patches(model, family.unrouted).items():
        model.transformer_blocks[int(name.rsplit(".", 1)[1])] = twin
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            model.transformer_blocks[i] = block


def sample(model, options=None, state=None):
    """Euler over SIGMAS; the model's prefix cache lives for one run, as ComfyUI resets it."""
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, IMAGE, D, generator=g), torch.randn(1, TEXT, D, generator=g)
    model.prefix_cache, model.prefix_passes = {}, 0
    for step in range(STEPS):
        call = step_options(options or {}, step, SIGMAS)
        t = SIGMAS[step:step + 1]
        if state is None:
            v = model(x, t, context, call)
        else:
            v = session.evaluate(lambda *a, **k: model(x, t, context, call), (x,), {}, call)
        x = x + (SIGMAS[step + 1] - SIGMAS[step]) * v
    return x


def hyca(model, granularity, interval=3, through_dit=False):
    family = families.detect(model, generic=True)
    patches = session.block_patches(model, family)
    options = {"patches_replace": {"dit": patches}} if through_dit else {routes.ROUTES_KEY: patches}
    schedule = Schedule(interval=interval, warmup=2)
    options[session.RUN_KEY] = state = session.ApplyConfig(family, granularity, schedule).start(model)
    return family, options, state


def test_the_small_model_caches_its_text_rows_exactly():
    model = QwenImage21Transformer2DModel()
    with torch.no_grad():
        cached = sample(model)
        assert model.prefix_passes == BLOCKS  # once, on the first step
        model.prefix_cache_enabled = False
        torch.testing.assert_close(sample(model), cached, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_qwen_image21_is_cached_through_routing_twins_and_keeps_its_prefix_cache(granularity):
    model = QwenImage21Transformer2DModel()
    with torch.no_grad():
        reference = sample(model)
        family, options, state = hyca(model, granularity, interval=1)
        with twins_in_place(model, family):
            assert torch.equal(sample(model, options, state), reference)  # every step full: the model's own output

        family, options, state = hyca(model, granularity)
        computed = []
        handles = [b.to_q.register_forward_hook(lambda m, a, o: computed.append(a[0].shape[1])) for b in model.transformer_blocks]
        try:
            with twins_in_place(model, family):
                out = sample(model, options, state)
        finally:
            for h in handles:
                h.remove()
        prefix_passes = model.prefix_passes
        # the same forecasts as replacements registered in "dit" (which turn the prefix cache off)
        _, dit_options, dit_state = hyca(model, granularity, through_dit=True)
        torch.testing.assert_close(out, sample(model, dit_options, dit_state), rtol=1e-4, atol=1e-4)
        assert model.prefix_passes == 0  # why HyCa routes these blocks itself

    assert family.unrouted is not None and family.blocks == (("single_block", "transformer_blocks"),)
    (row,) = state.report()
    assert row["granularity"] == granularity and not state.notes and row["predicted"] > 0
    assert prefix_passes == BLOCKS  # the text rows' K/V cache stayed on: filled once, reused after
    # the blocks ran on the image rows on full steps only, and on the text rows once
    assert computed.count(IMAGE) == row["full"] * BLOCKS and computed.count(TEXT) == BLOCKS
    snr = 10 * torch.log10(reference.var() / (out - reference).pow(2).mean())
    assert snr > 5, float(snr)


def test_a_call_on_the_text_rows_alone_is_not_the_blocks_step():
    block = Block21()
    x = torch.randn(1, TEXT, D)
    assert routes.qwen_image21_prefix_pass(x, (None, None, None, TEXT, {}), {})
    assert not routes.qwen_image21_prefix_pass(x, (None, None, None, 0, {}), {})
    assert not routes.qwen_image21_prefix_pass(torch.randn(1, TEXT + IMAGE, D), (None, None, None, TEXT, {}), {})
    twin = routes.routing(block, "single_block", 0, families.UNROUTED["QwenImage21Transformer2DModel"])
    assert isinstance(twin, Block21) and twin.hyca_original is block and twin.to_q is block.to_q
    assert dict(twin.named_parameters()).keys() == dict(block.named_parameters()).keys()
