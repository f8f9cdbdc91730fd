"""Where the user's local copy of the evaluation data is: ``--data-dir DIR``, else ``$PARATUNE_DATA``, else none.

There is deliberately no default folder: an installed paratune has no data beside it, and a guessed path would
hide a missing copy. Without a local copy the built-in tasks read lm-eval's hub data sets (``sources``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PARATUNE_DATA"


def data_dir(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """(folder or None, how it was given: ``--data-dir DIR`` / ``$PARATUNE_DATA=DIR`` / why there is none)."""
    if explicit is not None and str(explicit):
        return Path(explicit), f"--data-dir {explicit}"
    if os.environ.get(ENV):
        return Path(os.environ[ENV]), f"${ENV}={os.environ[ENV]}"
    return None, f"none given (--data-dir and ${ENV} are unset)"


def require_data_dir(what: str) -> Path:
    """The local copy, for ``what`` (a tool that reads it directly); FileNotFoundError when none is given."""
    folder, _ = data_dir()
    if folder is None or not folder.is_dir():
        where = f"${ENV}={folder}" if folder is not None else f"${ENV} is unset"
        raise FileNotFoundError(f"{what} reads the local copy of the evaluation data, but {where} is not a folder: "
                                f"set ${ENV} to it (the layout is in `paratune eval --help`)")
    return folder
