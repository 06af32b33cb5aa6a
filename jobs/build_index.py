#!/usr/bin/env python
"""Build the FAISS serving directory from exported vectors.

    python jobs/build_index.py --config conf/ml-100k.yaml   # paths.vectors -> paths.index
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/build_index.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/ml-100k.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from recsys.config import load_config
    from recsys.errors import RecsysError

    try:
        cfg = load_config(args.config, args.overrides)
        from recsys.serving import build_serving_dir

        build_serving_dir(cfg)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
