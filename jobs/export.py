#!/usr/bin/env python
"""Export user and movie vectors of the trained model to Parquet.

    python jobs/export.py --config conf/ml-100k.yaml   # paths.model + paths.prepared -> paths.vectors
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.entrypoint import run_job  # noqa: E402


def export(cfg, args) -> None:
    from recsys.export import export_vectors

    info = export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors, settings=cfg.export)
    print(f"exported {info['users']:,} users and {info['movies']:,} movies to {cfg.paths.vectors}")


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs/export.py", __doc__.split("\n")[0], export, argv)


if __name__ == "__main__":
    sys.exit(main())
