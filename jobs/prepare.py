#!/usr/bin/env python
"""Spark prepare job: raw MovieLens -> TFRecord shards, Parquet tables and manifest.json.

    spark-submit jobs/prepare.py --config conf/ml-100k.yaml [--set prepare.shards.train=4 ...]

Runs unchanged in local mode (the config's ``prepare.master`` when spark-submit sets no
master) and on a cluster (``spark-submit --master yarn|k8s://...``). See recsys.prepare.job.
"""

from __future__ import annotations

import argparse
import os
import sys

# spark-submit runs this file directly: make the repository importable without installation
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/prepare.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/ml-100k.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    args = parser.parse_args(argv)

    from recsys.config import load_config
    from recsys.errors import RecsysError

    try:
        cfg = load_config(args.config, args.overrides)
        from recsys.prepare.job import run_prepare

        manifest = run_prepare(cfg)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    acc = manifest["accounting"]["ratings"]
    print(f"prepared {cfg.paths.prepared}: {acc['rows_read']:,} rating rows read, {acc['rows_kept']:,} kept, "
          f"{sum(acc['rejected'].values()):,} quarantined; "
          + ", ".join(f"{k} {v['examples']:,}" for k, v in manifest["splits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
