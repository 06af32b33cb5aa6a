#!/usr/bin/env python
"""Train the configured model (model.kind) with Horovod (or as one plain process).

    horovodrun -np 4 python train.py --config conf/ml-100k.yaml [--resume] [--set train.epochs=5]
    python train.py --config conf/ml-100k.yaml
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recsys.entrypoint import run_job  # noqa: E402


def _arguments(parser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke tests)")


def train(cfg, args) -> None:
    from recsys.training import train as run_training

    run_training(cfg, resume=args.resume, max_steps=args.max_steps)


def main(argv: list[str] | None = None) -> int:
    return run_job("train.py", "Train the configured model (model.kind) with Horovod.", train, argv, _arguments)


if __name__ == "__main__":
    sys.exit(main())
