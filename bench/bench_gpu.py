#!/usr/bin/env python
"""Training throughput on one device: batch size x mixed precision x XLA, side by side.

    python bench/bench_gpu.py --config conf/synth-25m.yaml                  # on a GPU machine
    python bench/bench_gpu.py --config conf/ml-100k.yaml --batch 256 --batch 1024 --steps 5   # CPU smoke run

For every combination of ``--batch`` (examples per step; default 1k, 4k, 16k, 64k),
``--precision`` (``train.mixed_precision``; default off and float16) and ``--xla``
(``train.xla``; default off and on), one plain ``python train.py`` process (one rank, one
device) trains two epochs of ``--steps`` steps each on the prepared data of ``--config``. The
figure is the second epoch's examples/s (rank 0's history: training steps only, input pipeline
included, validation excluded), so tracing and XLA compilation in the first epoch are left out.
Each row also gives the ratio to the ``off``/no-XLA run at the same batch, measured in the same
invocation. Prints the device and Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_BATCHES = (1024, 4096, 16384, 65536)


def device_name() -> str:
    """The GPU's name (nvidia-smi), or the CPU's when there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return "GPU: " + out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").is_file() else "unknown"
    return f"CPU only: {model}, {os.cpu_count()} cores"


def run(config: str, batch: int, precision: str, xla: bool, steps: int, overrides: list[str]) -> dict:
    """One training process; returns its second epoch's history record (plus the settings)."""
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        sets = [f"paths.model={tmp}/model", "train.epochs=2", "train.early_stopping_patience=1000",
                f"train.batch_size={batch}", f"train.mixed_precision={precision}", f"train.xla={str(xla).lower()}",
                *overrides]
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", config, "--max-steps", str(steps),
               *[a for s in sets for a in ("--set", s)]]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), TF_USE_LEGACY_KERAS="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            return {"batch": batch, "precision": precision, "xla": xla, "error": proc.stderr.strip().splitlines()[-1:]}
        history = json.loads((Path(tmp) / "model" / "history.json").read_text())
    last = history[-1]
    return {"batch": batch, "precision": precision, "xla": xla, "examples_per_s": last["examples_per_s"],
            "step_ms": 1000.0 * batch / last["examples_per_s"],
            # a rating model's "rating" loss is the MSE; other models show their summed loss
            "train_rmse": math.sqrt(last["train_rating"]) if "train_rating" in last else None,
            "train_loss": last["train_loss"],
            "skipped_steps": last.get("skipped_steps", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/synth-25m.yaml")
    parser.add_argument("--batch", type=int, action="append", help="examples per step (repeatable; default 1k-64k)")
    parser.add_argument("--precision", action="append", choices=("off", "float16", "bfloat16"),
                        help="train.mixed_precision values (repeatable; default off and float16)")
    parser.add_argument("--xla", action="append", choices=("off", "on"), help="default: off and on")
    parser.add_argument("--steps", type=int, default=50, help="training steps per epoch (two epochs per run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from recsys.config import load_config
    from recsys.prepare.job import load_manifest

    cfg = load_config(args.config, args.overrides)
    examples = load_manifest(Path(cfg.paths.prepared))["splits"]["train"]["examples"]
    batches = args.batch or list(DEFAULT_BATCHES)
    precisions = args.precision or ["off", "float16"]
    xlas = [x == "on" for x in (args.xla or ["off", "on"])]
    print(f"device: {device_name()}; {examples:,} training examples in {cfg.paths.prepared}; "
          f"{args.steps} steps per epoch, second epoch timed", flush=True)
    for batch in batches:
        if examples < batch * args.steps:
            print(f"note: batch {batch}: {examples:,} examples give {examples // batch} step(s) per epoch "
                  f"(asked {args.steps})", flush=True)
    print("| batch | mixed precision | XLA | examples/s | ms/step | vs off, no XLA | train RMSE (or loss) | skipped steps |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    base = {}
    for batch, precision, xla in itertools.product(batches, precisions, xlas):
        r = run(args.config, batch, precision, xla, args.steps, args.overrides)
        label = f"| {batch:,} | {precision} | {'on' if xla else 'off'} |"
        if "error" in r:
            print(f"{label} failed: {' '.join(r['error'])} | | | | |", flush=True)
            continue
        if precision == "off" and not xla:
            base[batch] = r["examples_per_s"]
        ratio = f"{r['examples_per_s'] / base[batch]:.2f}x" if batch in base else "-"
        print(f"{label} {r['examples_per_s']:,.0f} | {r['step_ms']:.1f} | {ratio} | {r['train_rmse'] if r['train_rmse'] is not None else r['train_loss']:.4f} | "
              f"{r['skipped_steps']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
