#!/usr/bin/env python
"""Export user and movie vectors of the trained model to Parquet.

    python jobs/export.py --config conf/ml-100k.yaml   # paths.model + paths.prepared -> paths.vectors
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/export.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/ml-100k.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from recsys.config import load_config
    from recsys.errors import RecsysError

    try:
        cfg = load_config(args.config, args.overrides)
        from recsys.export import export_vectors

        info = export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {info['users']:,} users and {info['movies']:,} movies to {cfg.paths.vectors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
