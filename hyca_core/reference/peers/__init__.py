"""Clean-room baselines of 2026's caching methods, written from their papers, for the frontier
benchmark (``hyca_core.reference.frontier``): Spectrum, L2P and FreqCa on the final hidden state
(``driver``); FoCa runs on HyCa's own engine at module granularity with its published weights
(``solvers.foca`` and ``solvers.foca3``)."""
