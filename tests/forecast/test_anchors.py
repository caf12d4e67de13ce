"""Anchor store: copies not views, ring order, buffer reuse, dtype/device, restarts."""

import pytest
import torch

from hyca_core.forecast.anchors import AnchorStore
from hyca_core.forecast.solvers import MAX_ANCHORS


def test_stores_copies_not_views():
    store = AnchorStore()
    x = torch.ones(2, 3)
    store.push("f", 0.0, x)
    x.add_(5.0)  # a ComfyUI block updating its tensor in place
    (a,), _ = store.anchors("f")
    assert torch.equal(a, torch.ones(2, 3))


def test_ring_keeps_newest_first_and_reuses_buffers():
    store = AnchorStore(capacity=3)
    for t in range(5):
        store.push("f", float(t), torch.full((4,), float(t)))
    values, times = store.anchors("f")
    assert times == [4.0, 3.0, 2.0]
    assert [v[0].item() for v in values] == [4.0, 3.0, 2.0]
    assert store.nbytes == 3 * 4 * 4 and store.peak_nbytes == store.nbytes


def test_capacity_bounds_memory():
    store = AnchorStore(capacity=2)
    for t in range(4):
        store.push("f", float(t), torch.zeros(10))
    assert store.count("f") == 2 and store.nbytes == 2 * 10 * 4


def test_same_time_replaces_the_newest_anchor():
    store = AnchorStore()
    store.push("f", 1.0, torch.zeros(3))
    store.push("f", 2.0, torch.ones(3))
    store.push("f", 2.0, torch.full((3,), 7.0))  # second evaluation at the same sigma
    values, times = store.anchors("f")
    assert times == [2.0, 1.0] and values[0][0].item() == 7.0


@pytest.mark.parametrize("second", [torch.zeros(4), torch.zeros(3, dtype=torch.float64)])
def test_shape_or_dtype_change_restarts_history(second):
    store = AnchorStore()
    store.push("f", 0.0, torch.zeros(3))
    store.push("f", 1.0, torch.zeros(3))
    store.push("f", 2.0, second)
    assert store.count("f") == 1 and store.restarts == 1
    assert store.nbytes == second.numel() * second.element_size()


def test_time_going_back_restarts_history():
    store = AnchorStore()
    store.push("f", 5.0, torch.zeros(3))
    store.push("f", 6.0, torch.zeros(3))
    store.push("f", 1.0, torch.zeros(3))
    assert store.times("f") == [1.0] and store.restarts == 1


def test_chosen_dtype_is_used_for_storage_and_read_back_as_the_feature():
    """A forecast is in the feature's own dtype, whatever the anchors are stored in."""
    for store in (AnchorStore(dtype=torch.bfloat16), AnchorStore(precision="bf16")):
        x = torch.randn(8)
        store.push("f", 0.0, x)
        (a,), _ = store.anchors("f")
        assert store.nbytes == 8 * 2 and a.dtype == torch.float32
        assert torch.equal(a, x.to(torch.bfloat16).float())


def test_int8_anchors_keep_each_channel_within_half_a_level_in_a_quarter_of_the_bytes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 16, generator=g) * torch.logspace(-3, 2, 16)  # channels of very different size
    store = AnchorStore(precision="int8")
    store.push("f", 0.0, x)
    (a,), _ = store.anchors("f")
    level = x.abs().amax(dim=1, keepdim=True) / 127  # one scale per channel (over its tokens)
    assert a.dtype == x.dtype and a.shape == x.shape
    assert bool(((a - x).abs() <= level / 2 * (1 + 1e-5) + 1e-12).all())
    assert store.nbytes == x.numel() + 4 * 2 * 16  # int8 values and one float32 scale per (item, channel)
    bf16 = torch.randn(4, 8, dtype=torch.bfloat16, generator=g)
    store.push("g", 0.0, bf16)
    (b,), _ = store.anchors("g")
    assert b.dtype == torch.bfloat16
    store.push("f", 1.0, torch.zeros_like(x))  # an all-zero channel: no division by zero
    assert bool(torch.isfinite(store.anchors("f")[0][0]).all())


def test_each_feature_keeps_only_the_anchors_its_forecast_reads():
    store = AnchorStore(capacity=3, capacity_of={"reused": 1, "line": 2}.get)
    for t in range(4):
        for key in ("reused", "line"):
            store.push(key, float(t), torch.full((4,), float(t)))
    assert store.times("reused") == [3.0] and store.times("line") == [3.0, 2.0]
    assert store.nbytes == (1 + 2) * 4 * 4


def test_anchors_move_to_the_requested_device():
    store = AnchorStore(device="cpu")
    store.push("f", 0.0, torch.randn(8))
    (a,), _ = store.anchors("f", device="cpu")
    assert a.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to test CPU offload")
def test_cpu_offload_pins_and_round_trips():
    store = AnchorStore(device="cpu")
    x = torch.randn(64, device="cuda")
    store.push("f", 0.0, x)
    (a,), _ = store.anchors("f", device="cuda")
    assert store._rings["f"].buffers[0].is_pinned()
    assert torch.equal(a, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the side stream's copies")
@pytest.mark.parametrize("precision", ["model", "bf16", "int8"])
def test_offloaded_anchors_round_trip_through_the_side_stream(precision):
    store = AnchorStore(capacity=2, device="cpu", precision=precision)
    values = {f"f{i}": [torch.randn(4, 64, device="cuda") for _ in range(2)] for i in range(6)}
    for t in (0, 1):
        for key, pair in values.items():
            x = pair[t].clone()
            store.push(key, float(t), x)
            x.mul_(0)  # the block changes its output in place right after: the anchor must not follow
    for key, pair in values.items():
        got, times = store.anchors(key, device="cuda")
        assert times == [1.0, 0.0] and got[0].device.type == "cuda"
        tol = 0 if precision == "model" else 0.02
        assert torch.allclose(got[0], pair[1], atol=tol * 4, rtol=tol) and torch.allclose(got[1], pair[0], atol=tol * 4, rtol=tol)
    assert store.transfers.hits == 5 and store.transfers.misses == 1


def test_clear_frees_everything():
    store = AnchorStore()
    store.push("f", 0.0, torch.zeros(3))
    store.clear()
    assert "f" not in store and store.nbytes == 0
    with pytest.raises(KeyError):
        store.anchors("f")


def test_capacity_is_validated():
    AnchorStore(capacity=MAX_ANCHORS)  # history solvers read four anchors
    with pytest.raises(ValueError):
        AnchorStore(capacity=MAX_ANCHORS + 1)
    with pytest.raises(ValueError):
        AnchorStore(capacity=0)


def test_move_to_keeps_anchors_and_future_pushes_follow():
    store = AnchorStore()
    store.push("f", 0.0, torch.ones(3))
    store.move_to("cpu")
    store.push("f", 1.0, torch.full((3,), 2.0))
    values, times = store.anchors("f")
    assert times == [1.0, 0.0] and values[1][0].item() == 1.0 and store.device == torch.device("cpu")


def test_anchors_kept_on_the_host_are_fetched_ahead_in_stored_order():
    """cache_device cpu: reading one feature's anchors starts the next ones' copies back (on a GPU
    on a side stream; here at once, the same bookkeeping), a new full step makes them stale, and
    what is read is what a store on the device reads."""
    offloaded, local = AnchorStore(capacity=2, device="cpu"), AnchorStore(capacity=2)
    keys = [f"block.{i}" for i in range(7)]
    for t in (0.0, 1.0):
        for i, key in enumerate(keys):
            value = torch.full((2, 3), 10 * t + i)
            offloaded.push(key, t, value)
            local.push(key, t, value)
    assert offloaded.offloaded and not local.offloaded
    for key in keys:
        got, times = offloaded.anchors(key, device="cpu")
        want, want_times = local.anchors(key, device="cpu")
        assert times == want_times and all(torch.equal(a, b) for a, b in zip(got, want))
    transfers = offloaded.transfers
    assert (transfers.misses, transfers.hits) == (1, 6)  # only the first was read on use
    offloaded.push("block.3", 2.0, torch.zeros(2, 3))  # a full step: what was fetched of it is stale
    offloaded.anchors("block.2", device="cpu")  # fetches block.3 ahead again, from the new anchors
    got, times = offloaded.anchors("block.3", device="cpu")
    assert times == [2.0, 1.0] and torch.equal(got[0], torch.zeros(2, 3))
    offloaded.clear()
    assert not transfers._pending
