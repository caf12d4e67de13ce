"""The reference MMDiT: shapes, determinism, the patches_replace protocol, and (with a real
ComfyUI) identical outputs from the same weights in ComfyUI's own Flux class."""

import pytest
import torch

from hyca_core.reference import Flux, FluxConfig

CONFIG = FluxConfig(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(8, 12, 12), guidance_embed=True)


def inputs(batch=2, size=16, tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 16, size, size, generator=g), timestep=torch.rand(batch, generator=g),
                context=torch.randn(batch, tokens, 32, generator=g), y=torch.randn(batch, 32, generator=g),
                guidance=torch.full((batch,), 3.5))


def randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return randomized(Flux(CONFIG))


def test_output_has_the_latent_shape(model):
    with torch.no_grad():
        for size in (16, 24):
            assert model(**inputs(size=size)).shape == (2, 16, size, size)


def test_deterministic(model):
    with torch.no_grad():
        assert torch.equal(model(**inputs()), model(**inputs()))


def test_samples_in_a_batch_are_independent(model):
    both = inputs(batch=2)
    with torch.no_grad():
        out = model(**both)
        first = model(**{k: v[:1] for k, v in both.items()})
    torch.testing.assert_close(out[:1], first, rtol=1e-4, atol=1e-5)


def test_block_replacements_are_called_with_comfyui_arguments(model):
    seen = []

    def spy(args, extra):
        seen.append(sorted(k for k in args if k != "transformer_options"))
        return extra["original_block"](args)

    replace = {(kind, i): spy for kind, n in (("double_block", 2), ("single_block", 2)) for i in range(n)}
    with torch.no_grad():
        plain = model(**inputs())
        patched = model(**inputs(), transformer_options={"patches_replace": {"dit": replace}})
    assert torch.equal(plain, patched)
    assert seen == [["img", "pe", "txt", "vec"]] * 2 + [["img", "pe", "vec"]] * 2


def test_rejects_inconsistent_rope_axes():
    with pytest.raises(ValueError, match="axes_dim"):
        Flux(FluxConfig(hidden_size=64, num_heads=2, axes_dim=(8, 8, 8)))


def test_same_weights_same_outputs_in_comfyui_flux(model):
    from comfy_env import comfyui_path

    if comfyui_path() is None:
        pytest.skip("no ComfyUI found: weight compatibility is checked against ComfyUI's Flux (set COMFYUI_PATH)")
    from comfy_env import detected_config, require_comfyui

    require_comfyui()
    supported = detected_config("flux", CONFIG.comfy_unet_config())  # fields newer ComfyUI requires: its detection
    supported.set_inference_dtype(torch.float32, None)
    comfy_flux = supported.get_model({}).diffusion_model
    # through the model's own key conversion, as a checkpoint loads (0.26 renames the RMSNorm scales)
    state_dict = supported.process_unet_state_dict(dict(model.state_dict()))
    missing, unexpected = comfy_flux.load_state_dict(state_dict, strict=True)
    assert not missing and not unexpected
    args = inputs()
    with torch.no_grad():
        ours = model(**args)
        theirs = comfy_flux(args["x"], args["timestep"], args["context"], y=args["y"], guidance=args["guidance"])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("granularity", ["module", "block", "stack"])
def test_every_hyca_granularity_runs_on_it_without_comfyui(model, granularity):
    from hyca_core.model import families
    from hyca_core.model import session as patch
    from hyca_core.forecast.schedule import Schedule

    schedule = Schedule(interval=3, warmup=2)
    family = families.detect(model)
    assert family.name == "flux"
    replace = patch.block_patches(model, family)
    state = patch.ApplyConfig(family, granularity, schedule).start(model)
    sigmas = torch.linspace(1.0, 0.0, 9)
    with torch.no_grad():
        for step in range(8):
            args = inputs(seed=step)
            args["timestep"] = sigmas[step].expand(2)
            options = {"patches_replace": {"dit": replace}, patch.RUN_KEY: state, "sigmas": sigmas[step:step + 1],
                       "sample_sigmas": sigmas, "uuids": ["c"], "cond_or_uncond": [0]}
            out = patch.evaluate(lambda *a, **k: model(**args, transformer_options=options), (args["x"],), {}, options)
            stream = state.run.streams[("c",)]
            if stream.full:
                assert torch.equal(out, model(**args)), step
            assert torch.isfinite(out).all()
    assert stream.stats.predicted == 4 and state.granularity == granularity  # module rebuild matched


def test_bundled_weights_draw_what_the_prompt_asks():
    from hyca_core.reference.data import POSITIONS, Scene, decode, render
    from hyca_core.reference.pipeline import load_reference, sample

    model = load_reference()
    wanted = [Scene("circle", "red", "large", "center", "dark"), Scene("square", "blue", "small", "top left", "gray"),
              Scene("triangle", "yellow", "large", "bottom right", "dark")]
    images = decode(sample(model, [s.prompt for s in wanted], seed=123, steps=24, cfg=3.0))
    for scene, image in zip(wanted, images):
        target = render(scene)
        # the right colour where the prompt puts the shape, and the right background far from it
        cx, cy = POSITIONS[scene.position]
        centre = image[:, int(cy * 32), int(cx * 32)]
        assert (centre - target[:, int(cy * 32), int(cx * 32)]).abs().max() < 0.25, scene.prompt
        corner = (0, 31) if cx < 0.5 else (31, 0)
        assert (image[:, corner[0], corner[1]] - target[:, corner[0], corner[1]]).abs().max() < 0.25, scene.prompt
