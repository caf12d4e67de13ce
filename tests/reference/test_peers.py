"""The clean-room baselines of 2026's caching methods (``hyca_core.reference.peers``): each follows
its paper's rule, and the driver leaves a model untouched when nothing is forecast."""

import math

import pytest
import torch

from hyca_core.reference.peers import freqca, l2p, spectrum
from hyca_core.reference.peers.driver import AllFull, FinalStateRun, History
from hyca_core.reference.pipeline import sample
from hyca_core.reference.train import CONFIG, WAN_CONFIG
from hyca_core.reference.model import Flux
from hyca_core.reference.wan import WanModel

PROMPTS = ["a small red circle at the center on a dark background", "a large blue square at the top left on a gray background"]


def spectrum_full_steps(policy, steps):
    history = History()
    full = []
    for step in range(steps):
        if not history.steps or policy.full(step, steps, history):
            full.append(step)
            history.add(step, torch.zeros(1))
    return full


def test_spectrum_windows_grow_as_the_pack_grows_them():
    # warm-up 3, window 2, flex 0.75 (the pack's defaults), 20 steps: after the warm-up a window of
    # int(2) steps, then int(2.75), int(3.5), int(4.25), int(5.0), ...
    assert spectrum_full_steps(spectrum.Spectrum(warmup=3, window=2.0, flex=0.75), 20) == [0, 1, 2, 4, 6, 9, 13, 18]
    # flex 0: a fixed interval
    assert spectrum_full_steps(spectrum.Spectrum(warmup=1, window=3.0, flex=0.0), 10) == [0, 1, 4, 7]


def test_spectrum_blend_leans_to_chebyshev_while_the_window_is_long():
    policy = spectrum.Spectrum(window=2.0, flex=0.75, max_w=0.8)
    policy._current = 12.0
    long = policy.blend(step=5, steps=50)
    policy._current = 2.0
    assert 0.0 < policy.blend(step=5, steps=50) < long <= 0.8
    policy._current = 40.0
    assert policy.blend(step=49, steps=50) == 0.0  # one step left: the local line only


def test_spectrum_chebyshev_fit_is_exact_on_its_degree_without_ridge():
    policy = spectrum.Spectrum(degree=3, ridge=1e-9, max_w=1.0, window=30.0, flex=0.0)
    policy._current = 30.0
    history = History()
    cubic = lambda s: torch.tensor([0.2 + s - 0.3 * s ** 2 + 0.05 * s ** 3])  # noqa: E731
    for step in (0, 2, 5, 9, 14):
        history.add(step, cubic(step / 30))
    steps = 30
    share = policy.blend(16, steps)
    out = policy.forecast(16, steps, history)
    line = history.values[-1] + (16 - 14) / (14 - 9) * (history.values[-1] - history.values[-2])
    expected = (1 - share) * line + share * cubic(16 / 30)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_l2p_fit_recovers_weights_that_explain_the_trajectories():
    g = torch.Generator().manual_seed(0)
    full, steps = (0, 3, 6), 8
    records = []
    for _ in range(3):
        r = {s: torch.randn(4, 5, generator=g) for s in full}
        for t in range(steps):
            if t not in full:
                earlier = [s for s in sorted(full, reverse=True) if s < t]
                w = [1.4, -0.4, 0.0][: len(earlier)] if len(earlier) > 1 else [1.0]
                r[t] = sum(wi * r[s] for wi, s in zip(w, earlier))
        records.append(r)
    weights = l2p.fit(records, full, steps, ridge=1e-9)
    torch.testing.assert_close(weights[7], torch.tensor([1.4, -0.4, 0.0]), atol=1e-4, rtol=0)
    assert set(weights) == {1, 2, 4, 5, 7}
    reused = l2p.fit(records, full, steps, ridge=1e6)  # a huge ridge keeps the initial reuse
    torch.testing.assert_close(reused[7], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3, rtol=0)


def test_freqca_split_is_an_orthonormal_projection():
    d = freqca.dct_matrix(8)
    torch.testing.assert_close(d @ d.T, torch.eye(8), atol=1e-5, rtol=0)
    x = torch.randn(2, 64, 3)
    low = freqca.low_band(x, (1, 8, 8), 0.25)
    torch.testing.assert_close(freqca.low_band(low, (1, 8, 8), 0.25), low, atol=1e-5, rtol=0)
    torch.testing.assert_close(freqca.low_band(x, (1, 8, 8), 2.0), x, atol=1e-5, rtol=0)  # everything is low
    # a constant image is pure DC: all low band, whatever the cutoff
    flat = torch.ones(1, 64, 1)
    torch.testing.assert_close(freqca.low_band(flat, (1, 8, 8), 0.01), flat, atol=1e-5, rtol=0)


def test_freqca_reuses_the_low_band_and_extrapolates_the_high_band():
    policy = freqca.FreqCa((0, 2, 4), cutoff=0.2)
    history = History(grid=(1, 4, 4))
    g = torch.Generator().manual_seed(1)
    for step in (0, 2, 4):
        history.add(step, torch.randn(1, 16, 2, generator=g))
    out = policy.forecast(5, 10, history)
    low = lambda x: freqca.low_band(x, (1, 4, 4), 0.2)  # noqa: E731
    torch.testing.assert_close(low(out), low(history.values[-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [lambda: Flux(CONFIG), lambda: WanModel(WAN_CONFIG)], ids=["flux", "wan"])
def test_the_driver_with_nothing_to_forecast_is_the_plain_model(make):
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    plain = sample(model, PROMPTS, seed=3, steps=4, cfg=2.0)
    record = {}
    run = FinalStateRun(model, AllFull(), record=record)
    assert torch.equal(sample(model, PROMPTS, seed=3, steps=4, cfg=2.0, evaluate=run), plain)
    assert sorted(record) == [0, 1, 2, 3] and run.full_steps == [0, 1, 2, 3]
    # the residual target is the last block's image tokens minus the first block's input
    residual = FinalStateRun(model, AllFull(target="residual"), record={})
    sample(model, PROMPTS, seed=3, steps=2, cfg=2.0, evaluate=residual)
    assert residual.record[0].shape[1] == residual.history.grid[1] * residual.history.grid[2]
    assert not math.isnan(float(residual.record[0].abs().sum()))
