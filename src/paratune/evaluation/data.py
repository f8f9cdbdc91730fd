"""Where the shared data sets live: ``$PARATUNE_DATA``, else ``../shared/data`` beside the project root."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """$PARATUNE_DATA, else <repo root>/../shared/data."""
    if os.environ.get("PARATUNE_DATA"):
        return Path(os.environ["PARATUNE_DATA"])
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"
