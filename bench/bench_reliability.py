#!/usr/bin/env python
"""Failure drills on the real MovieLens-100K: does a run survive, and does it end where a clean one does?

    python bench/bench_reliability.py --config conf/ml-100k.yaml --kill-at-epoch 5

Three 2-rank Horovod runs on the same prepared data, same config:

1. ``clean``: uninterrupted (``horovodrun -np 2 python train.py``);
2. ``killed+resumed``: rank 1 gets SIGKILL during epoch ``--kill-at-epoch``; the time until
   the run exits is measured, then the same command with ``--resume`` finishes it;
3. ``elastic``: ``horovodrun --min-np 1 --max-np 2 --host-discovery-script ...`` with two local
   host names; one worker gets SIGKILL during the same epoch and the other carries on alone.

Each finished model is scored on the test split (RMSE, MAE) with the evaluation code.
Prints Markdown rows for docs/reliability.md. Takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def _pid_with(tag: str, key: str, value: str) -> int | None:
    """The training process of run ``tag`` whose environment has ``key=value``."""
    for entry in Path("/proc").iterdir():
        try:
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in kv)
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if env.get("RECSYS_DRILL") == tag and env.get(key) == value and b"python" in argv[0] \
                and any(a.endswith(b"train.py") for a in argv):
            return int(entry.name)
    return None


def _run(cmd: list[str], model_dir: Path, kill: tuple[str, str] | None, kill_at_epoch: int) -> dict:
    """Run ``cmd``; with ``kill``, SIGKILL that rank once ``kill_at_epoch - 1`` epochs are logged."""
    tag = uuid.uuid4().hex
    env = dict(os.environ, RECSYS_DRILL=tag, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(model_dir.parent / f"{model_dir.name}.log", "a")
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    killed_at = None
    while proc.poll() is None:
        time.sleep(0.5)
        if kill and killed_at is None:
            history = model_dir / "history.json"
            done = len(json.loads(history.read_text())) if history.is_file() else 0
            if done >= kill_at_epoch - 1:
                time.sleep(2.0)  # into the epoch
                pid = _pid_with(tag, *kill)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.time()
    ended = time.time()
    return {"rc": proc.returncode, "seconds": ended - started,
            "exit_after_kill_s": None if killed_at is None else ended - killed_at}


def _test_metrics(model_dir: Path, prepared: str, cfg) -> dict:
    """Test rating metrics of the model as served (exported and indexed into a scratch directory)."""
    import tempfile

    from recsys.evaluation import ServedModel, load_data, rating_metrics, served_directory

    data = load_data(prepared)
    with tempfile.TemporaryDirectory() as work:
        served = ServedModel(served_directory(model_dir, cfg, work)).fit(data)
        return rating_metrics(served, data.test, data.rating_min, data.rating_max)


def main(argv: list[str] | None = None) -> int:
    from recsys.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config", default="conf/ml-100k.yaml")
    parser.add_argument("--kill-at-epoch", type=int, default=5)
    parser.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or tempfile.mkdtemp(prefix="recsys-drill-"))
    out.mkdir(parents=True, exist_ok=True)
    sets = [a for o in args.overrides for a in ("--set", o)]

    def train(model_dir: Path, *launcher: str, resume: bool = False) -> list[str]:
        return [str(BIN / "horovodrun"), "-np", "2", *launcher, sys.executable, str(ROOT / "train.py"),
                "--config", args.config, *sets, "--set", f"paths.model={model_dir}", *(["--resume"] if resume else [])]

    rows = []
    clean = _run(train(out / "clean"), out / "clean", None, args.kill_at_epoch)
    rows.append(("clean (uninterrupted)", clean, out / "clean", "-"))
    killed = _run(train(out / "killed"), out / "killed", ("HOROVOD_RANK", "1"), args.kill_at_epoch)
    resumed = _run(train(out / "killed", resume=True), out / "killed", None, args.kill_at_epoch)
    rows.append((f"rank 1 killed in epoch {args.kill_at_epoch}, then --resume",
                 {"rc": resumed["rc"], "seconds": killed["seconds"] + resumed["seconds"]}, out / "killed",
                 f"exit {killed['rc']} {killed['exit_after_kill_s']:.1f}s after the kill" if killed["exit_after_kill_s"]
                 else "kill missed"))
    hosts = out / "hosts"
    hosts.write_text("localhost:1\n127.0.0.1:1\n")
    discover = out / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat {hosts}\n")
    discover.chmod(0o755)
    elastic = _run(train(out / "elastic", "--min-np", "1", "--max-np", "2", "--host-discovery-script", str(discover),
                         "--network-interface", "lo"), out / "elastic", ("HOROVOD_HOSTNAME", "127.0.0.1"),
                   args.kill_at_epoch)
    rows.append((f"elastic, one of 2 workers killed in epoch {args.kill_at_epoch}", elastic, out / "elastic",
                 "kept training" if elastic["exit_after_kill_s"] else "kill missed"))

    print(f"\nwork dir {out}\n")
    print("| run | exit | what happened | epochs | ranks per epoch | best valid RMSE | test RMSE | test MAE | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res, model_dir, what in rows:
        summary_path = model_dir / "model.json"
        if res["rc"] != 0 or not summary_path.is_file():
            print(f"| {name} | {res['rc']} | {what} | - | - | - | - | - | {res['seconds']:.0f} |")
            continue
        summary = json.loads(summary_path.read_text())
        ranks = "".join(str(h.get("ranks", "?")) for h in summary["history"])
        m = _test_metrics(model_dir, cfg.paths.prepared, cfg)
        print(f"| {name} | {res['rc']} | {what} | {summary['epochs_run']} | {ranks} | {summary['best_valid_rmse']:.4f} "
              f"| {m['rmse']:.4f} | {m['mae']:.4f} | {res['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
