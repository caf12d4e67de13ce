"""The calibration room: the settings and the situations solvers are scored in (``config``), the
streaming open-loop statistics and their choice per cluster (``open_loop``, ``moments``,
``descriptors``), the closed loop on sampled images (``closed_loop``), calibrated placements of
full steps and their learned weights (``placement``, ``placed``), the whole procedure HyCa
Calibrate runs (``procedure``), calibration's run state (``taps``) and auto-calibration
(``auto``). Looks down at every other room."""
