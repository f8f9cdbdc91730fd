"""The ``paratune`` command line: the top layer, which imports every verb and is imported by none of them.

``verbs.py`` is the table (one entry per verb: name, help, config dataclass, the function it runs), ``flags.py``
turns a config dataclass into flags and back, ``parser.py`` builds argparse from the table and maps errors to exit
codes, ``commands.py`` holds the few lines each verb runs. Each verb's config lives beside the verb itself:
``TrainConfig`` (training/config.py), ``GenerateConfig`` (generate.py), ``ServeConfig`` (server/serve_config.py),
``DemoConfig`` (demo/config.py), ``BenchConfig`` (bench/serve_bench.py), ``QualityConfig`` (bench/quality),
``EvalConfig`` (evaluate.py).
"""

from .flags import add_config_arguments, config_from_args
from .parser import build_parser, main
from .verbs import VERBS, Verb

__all__ = ["VERBS", "Verb", "add_config_arguments", "build_parser", "config_from_args", "main"]
