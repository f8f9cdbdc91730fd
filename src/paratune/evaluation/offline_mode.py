"""``offline()``: no hub access for this process, for code that reads local files only.

A module of its own so that ``run``, ``tasks`` and the quality benchmark can all call it without importing each
other. It only helps before ``datasets`` / ``huggingface_hub`` are imported (they read these variables once), and
it never overrides a value the user set. Importing ``paratune.evaluation`` no longer calls it: a built-in task
without a local copy reads the hub data set lm-eval uses, which needs the hub (or a filled ``datasets`` cache).
"""

from __future__ import annotations

import os


def offline() -> None:
    """HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 unless already set."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
