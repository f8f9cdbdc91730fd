"""``python -m paratune.cli``: the same as the ``paratune`` console script (used where the script may not be on
PATH, e.g. a benchmark starting a server with the running interpreter)."""

import sys

from . import main

sys.exit(main())
