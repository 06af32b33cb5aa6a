"""The shared shape of every job script: ``--config`` and ``--set``, one ``error:`` line on a user mistake."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def run_job(prog: str, description: str, body: Callable, argv: list[str] | None = None,
            add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse ``--config``/``--set`` (plus ``add_arguments``), load the config, run ``body(cfg, args)``.

    Returns the process exit status: 0, or 2 after printing ``error: ...`` for a RecsysError.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default="conf/ml-100k.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the arguments and the config, print the resolved paths, run nothing")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Spark's and TensorFlow's own INFO/WARNING logs (default: progress and errors)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)

    from recsys.verbosity import set_verbose

    set_verbose(args.verbose)

    from recsys.config import load_config
    from recsys.errors import RecsysError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            paths = ", ".join(f"{k}={v}" for k, v in cfg.to_dict()["paths"].items())
            print(f"{prog}: dry run, config {cfg.source} is valid; {paths}")
            return 0
        body(cfg, args)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
