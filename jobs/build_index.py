#!/usr/bin/env python
"""Build the FAISS serving directory from exported vectors.

    python jobs/build_index.py --config conf/ml-100k.yaml   # paths.vectors -> paths.index
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.entrypoint import run_job  # noqa: E402


def build(cfg, args) -> None:
    from recsys.serving import build_serving_dir

    build_serving_dir(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs/build_index.py", __doc__.split("\n")[0], build, argv)


if __name__ == "__main__":
    sys.exit(main())
