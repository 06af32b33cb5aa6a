#!/usr/bin/env python
"""Spark prepare job: raw MovieLens -> TFRecord shards, Parquet tables and manifest.json.

    spark-submit jobs/prepare.py --config conf/ml-100k.yaml [--set prepare.shards.train=4 ...]

Runs unchanged in local mode (the config's ``prepare.master`` when spark-submit sets no
master) and on a cluster (``spark-submit --master yarn|k8s://...``). See recsys.prepare.job.
"""

from __future__ import annotations

import os
import sys

# spark-submit runs this file directly: make the repository importable without installation
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.entrypoint import run_job  # noqa: E402


def prepare(cfg, args) -> None:
    from recsys.prepare.job import run_prepare

    manifest = run_prepare(cfg)
    acc = manifest["accounting"]["ratings"]
    print(f"prepared {cfg.paths.prepared}: {acc['rows_read']:,} rating rows read, {acc['rows_kept']:,} kept, "
          f"{sum(acc['rejected'].values()):,} quarantined; "
          + ", ".join(f"{k} {v['examples']:,}" for k, v in manifest["splits"].items()))


def main(argv: list[str] | None = None) -> int:
    return run_job("jobs/prepare.py", __doc__.split("\n")[0], prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
