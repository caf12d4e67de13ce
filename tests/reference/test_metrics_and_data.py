"""Quality metrics on known cases, and the reference data set (rendering, VAE, text encoder)."""

import math
import struct
import zlib

import pytest
import torch

from hyca_core.reference.metrics import psnr, ssim
from hyca_core.reference.data import POSITIONS, Scene, TextEncoder, decode, encode, render, scenes
from hyca_core.reference.pipeline import flux_sigmas
from hyca_core.reference.png import grid, write_png


def images(seed=0, n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_images():
    x = images()
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_psnr_of_a_known_offset():
    x = torch.full((1, 3, 8, 8), 0.5)
    assert float(psnr(x + 0.1, x)) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01), fp32 inputs


def test_ssim_known_cases():
    x = images(n=1)
    assert float(ssim(x * 0 + 0.5, x)) < 0.05  # structure gone
    assert float(ssim(1 - x, x)) < 0  # inverted structure
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert 0.5 < float(ssim(noisy, x)) < 1.0
    assert float(ssim(x, noisy)) == pytest.approx(float(ssim(noisy, x)))  # symmetric


def test_scenes_are_deterministic_and_varied():
    assert scenes(3, 20) == scenes(3, 20)
    assert len({s.prompt for s in scenes(3, 50)}) > 40


def test_render_puts_the_shape_where_the_prompt_says():
    for position, (cx, cy) in POSITIONS.items():
        image = render(Scene("square", "red", "small", position, "dark"))
        red = image[0] - image[1]
        ys, xs = torch.nonzero(red > 0.5, as_tuple=True)
        assert abs(xs.float().mean() / 32 + 0.5 / 32 - cx) < 0.05 and abs(ys.float().mean() / 32 + 0.5 / 32 - cy) < 0.05


def test_vae_round_trip_is_exact():
    x = torch.stack([render(s) for s in scenes(0, 4)])
    latent = encode(x)
    assert latent.shape == (4, 16, 16, 16)
    torch.testing.assert_close(decode(latent), x, rtol=0, atol=1e-6)


def test_text_encoder():
    encoder = TextEncoder()
    context, pooled = encoder(["a small red circle at the center on a dark background", "", "a blue circle"])
    assert context.shape == (3, 12, 32) and pooled.shape == (3, 32)
    assert not context[1].any() and not pooled[1].any()  # the empty prompt (CFG's uncond) is zero
    again, _ = TextEncoder()(["a small red circle at the center on a dark background"])
    assert torch.equal(again[0], context[0])
    assert not torch.equal(context[0, :4], context[2, :4])


def test_flux_sigmas():
    s = flux_sigmas(20)
    assert s.shape == (21,) and s[0] == 1.0 and s[-1] == 0.0 and bool((s[1:] < s[:-1]).all())
    assert float(s[10]) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1.0), rel=1e-5)


def test_png_writer(tmp_path):
    x = grid(images(n=3, size=4), columns=2, scale=2)
    write_png(str(tmp_path / "g.png"), x)
    data = (tmp_path / "g.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (height, width) == tuple(x.shape[1:])
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4: idat])[0]
    raw = zlib.decompress(data[idat + 4: idat + 4 + length])
    assert len(raw) == height * (1 + 3 * width)
