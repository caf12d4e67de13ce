"""The second reference model, a Wan 2.1-layout DiT on procedural textures: shapes, the
patches_replace protocol, every HyCa granularity without ComfyUI, its data, and (with a real
ComfyUI) identical outputs from the same weights loaded through ComfyUI's own checkpoint detection."""

import pytest
import torch

from hyca_core.model import families
from hyca_core.model import session as patch
from hyca_core.reference import textures
from hyca_core.reference.pipeline import discrete_flow_sigmas, kind_of, sample
from hyca_core.reference.wan import WanConfig, WanModel, comfy_state_dict, pad_context
from hyca_core.forecast.schedule import Schedule

CONFIG = WanConfig(dim=128, ffn_dim=256, num_layers=2, text_dim=32)


def randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = p[0].numel() ** -0.5 if p.dim() > 1 and not name.endswith("modulation") else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return randomized(WanModel(CONFIG))


def inputs(batch=2, size=16, frames=1, tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 16, frames, size, size, generator=g),
                timestep=1000 * torch.rand(batch, generator=g), context=torch.randn(batch, tokens, 32, generator=g))


def test_output_has_the_latent_shape(model):
    with torch.no_grad():
        assert model(**inputs()).shape == (2, 16, 1, 16, 16)
        assert model(**inputs(frames=3, size=8)).shape == (2, 16, 3, 8, 8)


def test_samples_in_a_batch_are_independent(model):
    both = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**both)[:1], model(**{k: v[:1] for k, v in both.items()}), rtol=1e-4, atol=1e-5)


def test_heads_are_comfyuis_128_channels():
    with pytest.raises(ValueError, match="multiple of 128"):
        WanConfig(dim=96)
    assert WanConfig(dim=256).num_heads == 2


def test_it_is_hycas_wan_family_and_every_granularity_runs_on_it(model):
    family = families.detect(model)
    assert family.name == "wan"
    sigmas = discrete_flow_sigmas(8)
    for granularity in families.GRANULARITIES:
        replace = patch.block_patches(model, family)
        state = patch.ApplyConfig(family, granularity, Schedule(interval=3, warmup=2)).start(model)
        with torch.no_grad():
            for step in range(8):
                args = inputs(seed=step)
                args["timestep"] = 1000 * sigmas[step].expand(2)
                options = {"patches_replace": {"dit": replace}, patch.RUN_KEY: state, "sigmas": sigmas[step:step + 1],
                           "sample_sigmas": sigmas, "uuids": ["c"], "cond_or_uncond": [0]}
                out = patch.evaluate(lambda *a, **k: model(**args, transformer_options=options), (args["x"],), {},
                                     options)
                stream = state.run.streams[("c",)]
                if stream.full:
                    assert torch.equal(out, model(**args)), (granularity, step)
                assert torch.isfinite(out).all()
        assert stream.stats.predicted == 4 and state.granularity == granularity, granularity


def test_the_discrete_flow_schedule_is_comfyuis_simple_scheduler():
    sigmas = discrete_flow_sigmas(10, shift=3.0)
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0.0 and len(sigmas) == 11
    assert bool((sigmas[:-1] > sigmas[1:]).all())
    # the table entry "simple" picks at step 5 of 10: timestep 500 of 1000, shifted
    assert float(sigmas[5]) == pytest.approx(3.0 * 0.5 / (1 + 2.0 * 0.5), abs=1e-6)


def test_texture_prompts_name_what_is_drawn_and_data_is_reproducible():
    first, again = textures.textures(7, 12), textures.textures(7, 12)
    assert first == again
    for texture in first:
        assert texture.pattern in texture.prompt and texture.color in texture.prompt
        image = textures.render(texture)
        assert image.shape == (3, 32, 32) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    stripes = textures.Texture("stripes", "red", "blue", "coarse", "vertical", 0.0)
    image = textures.render(stripes)
    assert image[0, :, 2].mean() > 0.8 and image[2, :, 8].mean() > 0.8  # red, then blue, column by column
    encoder = textures.text_encoder()
    context, _ = encoder([stripes.prompt])
    assert context.shape == (1, 12, 32) and bool(context.abs().sum() > 0)


def test_the_sampler_calls_it_with_1000_sigma(model):
    seen = []
    handle = model.time_embedding.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    try:
        out = sample(model, ["fine red and blue dots"], seed=0, steps=2, cfg=1.0)
    finally:
        handle.remove()
    assert out.shape == (1, 16, 1, 16, 16) and kind_of(model).name == "wan" and len(seen) == 2
    assert kind_of(model).timestep(torch.tensor([0.25])).item() == pytest.approx(250.0)


def test_same_weights_same_outputs_through_comfyuis_detection(model):
    from comfy_env import comfyui_path

    if comfyui_path() is None:
        pytest.skip("no ComfyUI found: weight compatibility is checked against ComfyUI's WanModel (set COMFYUI_PATH)")
    from comfy_env import require_comfyui

    require_comfyui()
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(comfy_state_dict(model), model_options={"dtype": torch.float32})
    assert type(patcher.model.diffusion_model).__name__ == "WanModel"
    args = inputs()
    with torch.no_grad():
        ours = model(**args)
        theirs = patcher.model.diffusion_model(args["x"], args["timestep"], pad_context(args["context"]))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
