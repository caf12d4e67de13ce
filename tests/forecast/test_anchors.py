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


def test_chosen_dtype_is_used_for_storage():
    store = AnchorStore(dtype=torch.bfloat16)
    store.push("f", 0.0, torch.randn(8))
    (a,), _ = store.anchors("f")
    assert a.dtype == torch.bfloat16


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
