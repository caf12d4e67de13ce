"""HyCa engine: hybrid per-channel feature caching for diffusion transformers.

Pure PyTorch (+ NumPy, scikit-learn, safetensors); nothing here imports ComfyUI.

- ``solvers``     the solver pool, each a linear multistep predictor on <= 3 anchors
- ``predictor``   per-channel hybrid of solvers as one weighted sum
- ``anchors``     ring buffers of copied full-step features
- ``schedule``    full / predicted decisions on a continuous step axis
- ``runtime``     per-run, per-stream caching state
- ``calibration`` streaming one-time choosing (k-means over channel dynamics, least-squares fit)
- ``solver_map``  the solver map file format; ``python -m hyca_core.maps`` inspects files
"""

__version__ = "0.2.0"
