"""Forecasting, the bottom room: the solver pool (each solver a linear combination of at most four
anchors), the per-channel hybrid predictor (one weighted sum), the anchor store, the schedule of
full and forecast steps on a continuous step axis, and a cond's stream that ties them together.
Imports nothing of the other rooms."""
