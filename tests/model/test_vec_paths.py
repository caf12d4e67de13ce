"""The vec paths of newer model variants, through small models whose own vec follows the newest
stored ComfyUI code (read, not copied): every forecast must find the gates its full step computed
ahead, and give the images of gates computed on the step.

- HunyuanVideo 1.5's mean-flow term (comfy/ldm/hunyuan_video/model.py at 18927538, as of
  Comfy-Org/ComfyUI 4f874c5e, mirrored by silveroxides/ComfyUI): ``time_in(emb(t, factor 1))``,
  then ``time_r_in`` of the sample sigma after the step's own (``emb`` factor 1000), summed
  (``meanflow_sum``) or averaged, then ``vector_in(y)`` and guidance.
- Qwen-Image-Edit-2511 (comfy/ldm/qwen_image/model.py at f8999928): the timestep batch doubled with
  a zero timestep when reference latents take the ``index_timestep_zero`` path, ``time_text_embed``
  a sinusoid (cosines first, scale 1000) into an MLP, and ``additional_t_cond``.
"""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hyca_core.model import families, session
from hyca_core.reference.model import Flux, FluxConfig, MLPEmbedder
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.forecast.schedule import Schedule
from hyca_core.model.vec_paths import timestep_embedding
import test_newer_blocks as newer_blocks
from test_newer_blocks import D

STEPS = 12


class HunyuanVideo(Flux):
    """The reference MMDiT's blocks under HunyuanVideo's conditioning vector (named as ComfyUI's class)."""

    def __init__(self, meanflow=False, meanflow_sum=False):
        super().__init__(FluxConfig(guidance_embed=True, depth=2, depth_single_blocks=2))
        self.params = SimpleNamespace(vec_in_dim=self.config.vec_in_dim, guidance_embed=True, meanflow_sum=meanflow_sum)
        self.time_r_in = MLPEmbedder(256, self.config.hidden_size) if meanflow else None

    def forward(self, x, timestep, context, y=None, txt_byt5=None, clip_fea=None, guidance=None, attention_mask=None,
                guiding_frame_index=None, ref_latent=None, disable_time_r=False, control=None, transformer_options={}):
        img, img_ids, txt_ids = self.embed_image(x, context)
        vec = self.time_in(timestep_embedding(timestep, 256, time_factor=1.0).to(img.dtype))
        if self.time_r_in is not None and not disable_time_r:
            sigmas = transformer_options["sample_sigmas"]
            w = torch.where(transformer_options["sigmas"][0] == sigmas)[0]
            if len(w) > 0:
                following = sigmas[w[0] + 1].unsqueeze(0).to(device=timestep.device, dtype=timestep.dtype)
                vec_r = self.time_r_in(timestep_embedding(following, 256, time_factor=1000.0).to(img.dtype))
                vec = vec + vec_r if self.params.meanflow_sum else (vec + vec_r) / 2
        vec = vec + self.vector_in(y[:, :self.params.vec_in_dim])
        if guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        return self.run_blocks(x, img, img_ids, txt_ids, context, vec, transformer_options)


class TimeTextEmbed(nn.Module):
    def __init__(self, additional=False):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(256, D), nn.Linear(D, D)
        self.addition_t_embedding = nn.Embedding(2, D) if additional else None

    def forward(self, timestep, hidden_states, addition_t_cond=None):
        exponent = -math.log(10000) * torch.arange(128, dtype=torch.float32) / 128
        angles = 1000 * (timestep.float()[:, None] * exponent.exp()[None])
        proj = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # flip_sin_to_cos
        emb = self.linear_2(nn.functional.silu(self.linear_1(proj.to(hidden_states.dtype))))
        if self.addition_t_embedding is not None:
            if addition_t_cond is None:
                addition_t_cond = torch.zeros(emb.shape[0], dtype=torch.long)
            emb = emb + self.addition_t_embedding(addition_t_cond).to(emb.dtype)
        return emb


class QwenImageTransformer2DModel(newer_blocks.QwenImageTransformer2DModel):
    """Qwen-Image's blocks (``test_newer_blocks``) under its own timestep embedding; the latent
    ``(B, D, 1, tokens)`` at patch size 1, reference latents appended after it."""

    default_ref_method = "index"

    def __init__(self, additional=False):
        super().__init__()
        self.transformer_blocks = self.transformer_blocks[:2]
        self.time_text_embed = TimeTextEmbed(additional)

    def forward(self, x, timestep, context, attention_mask=None, ref_latents=None, additional_t_cond=None,
                transformer_options={}, **kwargs):
        img = x.flatten(2).transpose(1, 2)
        tokens, zero_index = img.shape[1], None
        if ref_latents is not None:
            img = torch.cat([img] + [r.flatten(2).transpose(1, 2) for r in ref_latents], 1)
            if kwargs.get("ref_latents_method", self.default_ref_method) == "index_timestep_zero":
                timestep, zero_index = torch.cat([timestep, timestep * 0], dim=0), tokens
        temb = self.time_text_embed(timestep, img, additional_t_cond)
        img, _ = self.run_blocks(img, context, temb, zero_index, transformer_options)
        return img[:, :tokens].transpose(1, 2).reshape(x.shape)


def sample(model, call_of, timestep_scale=1.0, ahead=True, steps=STEPS):
    """Every step's output under HyCa at module granularity, called as the DIFFUSION_MODEL wrapper
    is (``call_of(x, timestep)`` -> args, kwargs); and the run's stats."""
    family = families.detect(model)
    family = family if ahead else replace(family, vec_path=None)
    patches = session.block_patches(model, family)
    state = session.ApplyConfig(family, "module", Schedule(interval=4, warmup=2)).start(model)
    state.timestep_of = lambda sigma: sigma * timestep_scale
    sigmas, outputs = flux_sigmas(steps), []
    with torch.no_grad():
        for i in range(steps):
            sigma = sigmas[i:i + 1]
            options = {"patches_replace": {"dit": patches}, session.RUN_KEY: state, "sigmas": sigma,
                       "sample_sigmas": sigmas, "uuids": ["c"], "cond_or_uncond": [0]}
            args, kwargs = call_of(sigma * timestep_scale)
            outputs.append(session.evaluate(model, args, {**kwargs, "transformer_options": options}, options))
    stats = next(iter(state.run.streams.values())).stats
    assert state.granularity == "module" and not state.notes, state.notes
    return torch.stack(outputs), stats


@pytest.mark.parametrize("meanflow, meanflow_sum", [(False, False), (True, False), (True, True)])
def test_hunyuan_video_vec_with_and_without_its_mean_flow_term(meanflow, meanflow_sum):
    torch.manual_seed(0)
    model = HunyuanVideo(meanflow, meanflow_sum).eval()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    y, guidance = torch.randn(2, 32, generator=g), torch.full((2,), 6.0)

    def call_of(timestep):  # the timestep is 1000 sigma, as HunyuanVideo's model sampling gives it
        return (x, timestep.expand(2), context, y, None, None, guidance), {}
    ahead, stats = sample(model, call_of, timestep_scale=1000.0)
    on_step, _ = sample(model, call_of, timestep_scale=1000.0, ahead=False)
    assert stats.predicted > 0 and stats.gates_ahead == stats.predicted and not stats.gates_on_step, stats.gates_on_step
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, additional", [("index", False), ("index_timestep_zero", False), ("index", True)])
def test_qwen_image_vec_with_reference_latents_and_an_additional_condition(method, additional):
    model = QwenImageTransformer2DModel(additional).eval()
    g = torch.Generator().manual_seed(3)
    x, reference = torch.randn(2, D, 1, 10, generator=g), torch.randn(2, D, 1, 4, generator=g)
    context = torch.randn(2, 3, D, generator=g)
    extra = {"additional_t_cond": torch.ones(2, dtype=torch.long)} if additional else {}

    def call_of(timestep):
        return (x, timestep.expand(2), context), {"ref_latents": [reference], "ref_latents_method": method, **extra}
    ahead, stats = sample(model, call_of)
    on_step, _ = sample(model, call_of, ahead=False)
    assert stats.predicted > 0 and stats.gates_ahead == stats.predicted and not stats.gates_on_step, stats.gates_on_step
    torch.testing.assert_close(ahead, on_step, rtol=1e-5, atol=1e-6)


def test_a_variant_with_no_vec_path_computes_its_gates_on_the_step_and_says_so():
    """Qwen-Image of older ComfyUI with distilled guidance in its time embedding: no path, the
    forecasts compute their gates (the report names why)."""
    model = QwenImageTransformer2DModel().eval()
    x, context = torch.randn(1, D, 1, 10), torch.randn(1, 3, D)
    family = families.detect(model)
    patches = session.block_patches(model, family)
    state = session.ApplyConfig(family, "module", Schedule(interval=4, warmup=2)).start(model)
    sigmas = flux_sigmas(STEPS)
    with torch.no_grad():
        for i in range(STEPS):
            options = {"patches_replace": {"dit": patches}, session.RUN_KEY: state, "sigmas": sigmas[i:i + 1],
                       "sample_sigmas": sigmas, "uuids": ["c"], "cond_or_uncond": [0]}
            session.evaluate(lambda *a, guidance=None, **k: model(*a, **k), (x, sigmas[i:i + 1], context),
                             {"guidance": torch.ones(1), "transformer_options": options}, options)
    stats = next(iter(state.run.streams.values())).stats
    assert stats.gates_ahead == 0 and sum(stats.gates_on_step.values()) == stats.predicted > 0
    assert any("no way to compute this model variant's vec ahead" in note for note in state.gate_notes)
