"""The model room: what HyCa knows of diffusion transformers (``families``, one file each), how
their blocks are cached (``blocks``; gates computed ahead: ``gates``, ``vec_paths``; modules
skipped: ``skips``; blocks routed without the "dit" lookup: ``routes``), the run-state protocol
(``run_state``), one run's caching state (``session``) and the driver of each model call
(``driver``). Looks down at ``forecast`` and ``maps``."""
