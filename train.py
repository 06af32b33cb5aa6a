#!/usr/bin/env python
"""Train the rating network with Horovod (or as one plain process).

    horovodrun -np 4 python train.py --config conf/ml-100k.yaml [--resume] [--set train.epochs=5]
    python train.py --config conf/ml-100k.yaml
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description="Train the rating network (Horovod).")
    parser.add_argument("--config", default="conf/ml-100k.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke tests)")
    args = parser.parse_args(argv)

    from recsys.config import load_config
    from recsys.errors import RecsysError

    try:
        cfg = load_config(args.config, args.overrides)
        from recsys.training import train

        train(cfg, resume=args.resume, max_steps=args.max_steps)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
