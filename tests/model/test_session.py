"""The run-state protocol (``hyca_core.model.run_state``): the driver needs only what a state
declares, so a state that defines just ``stream`` and ``context`` runs a model call, and every
state HyCa has is one."""

import torch

from hyca_core.calibrate.auto import AutoState
from hyca_core.calibrate.taps import CalibrationState, CalibrationTap
from hyca_core.experimental.sensitivity import ProbeState, ProbeTap
from hyca_core.forecast.stream import CacheStream, StreamBase
from hyca_core.model import session
from hyca_core.model.blocks import EvalContext
from hyca_core.model.run_state import RunStateBase


def test_every_run_state_and_stream_declares_the_protocol():
    for state in (session.RunState, session.PlainState, CalibrationState, AutoState, ProbeState):
        assert issubclass(state, RunStateBase), state
    for stream in (CacheStream, CalibrationTap, ProbeTap):
        assert issubclass(stream, StreamBase), stream


class Counting(RunStateBase):
    """The least a state must say: its streams and the context its blocks read."""

    def __init__(self):
        super().__init__()
        self.streams, self.calls = {}, 0

    def stream(self, key, name):
        return self.streams.setdefault(key, Always())

    def context(self, stream, full, diffusion_model=None):
        self.calls += 1
        return EvalContext(stream, True, "block", None, diffusion_model)


class Always(StreamBase):
    def begin(self, t, n_steps, signature=None, force_full=False):
        return True


def test_a_state_with_only_streams_and_contexts_drives_a_model_call():
    state = Counting()

    def model(x, transformer_options):
        assert transformer_options[session.RUN_KEY] is state
        return x * 2

    x = torch.ones(1, 3)
    options = {session.RUN_KEY: state, "sigmas": torch.tensor([1.0]), "sample_sigmas": torch.tensor([1.0, 0.0]),
               "uuids": ["c"], "cond_or_uncond": [0]}
    # no block ever sees the context here, so the driver says so: the state's default ``after`` takes it
    out = session.evaluate(model, (x,), {"transformer_options": options}, options)
    assert torch.equal(out, x * 2) and state.calls == 1 and list(state.streams) == [("c",)]
