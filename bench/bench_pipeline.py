#!/usr/bin/env python
"""The whole pipeline at scale, stage by stage, with Spark MLlib ALS on the same split.

    python bench/bench_pipeline.py --config conf/synth-25m.yaml --ranks 2

Runs, each stage as the user runs it (its own process, the config's paths):

1. ``recsys data synth --config CONFIG``   (skipped with ``--reuse-raw`` when the raw folder holds it)
2. ``spark-submit jobs/prepare.py --config CONFIG``
3. ``horovodrun -np RANKS python train.py --config CONFIG`` (to early stopping or ``train.epochs``)
4. ``python jobs/export.py`` and 5. ``python jobs/build_index.py``
6. evaluation, one process per recommender (what ``recsys evaluate`` runs for each): the served
   model over every user with test ratings, then, on the same prepared split, Spark MLlib ALS
   explicit (RMSE) and implicit (top-k) with the config's ``evaluate.als`` / ``evaluate.implicit_als``
   settings (the first point of the implicit grid: one fit each at this size, no tuning), and
   popularity; plus the synthetic data's noise floor (the best RMSE any model can reach);
7. a batch of ``--queries`` known-user top-10 queries through ``Recommender.load(...).recommend``.

For every stage it prints wall seconds, the peak RSS of its whole process tree (sampled every
0.5 s: Spark's JVM and Python workers, every Horovod rank) and its throughput; then the quality
table (RMSE, NDCG@10, time to the best validation score). ``--out FILE`` keeps it all as JSON.
Evaluation of the baselines ranks ``--baseline-users`` sampled users (0: every one; the
report gives the sample size and NDCG@10's 95% interval).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` from the repository root, its output to ``log``; wall seconds and peak RSS (MiB)
    of the process and all its descendants. Raises SystemExit naming the stage and log on failure."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", TF_USE_LEGACY_KERAS="1",
               SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable),
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    print(f"[pipeline] {name}: {' '.join(cmd)}", flush=True)
    started = time.time()
    peak = 0
    with open(log, "w") as out:
        proc = psutil.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rss = 0
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    rss += p.memory_info().rss
            except psutil.Error:
                pass
            peak = max(peak, rss)
            time.sleep(0.5)
    seconds = time.time() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"[pipeline] {name} failed (exit {proc.returncode}) after {seconds:.0f}s; "
                         f"log {log}:\n" + "\n".join(tail))
    print(f"[pipeline] {name}: {seconds:.1f}s, peak RSS {peak / 2**20:,.0f} MiB", flush=True)
    return {"stage": name, "command": " ".join(cmd), "seconds": seconds, "peak_rss_mib": peak / 2**20}


# ---------------------------------------------------------------------------- evaluation pieces


def _recommender(name: str, cfg):
    from recsys.evaluation import Popularity, ServedModel, SparkALS
    from recsys.topk_baselines import ImplicitAls

    ev = cfg.evaluate
    if name == "model":
        return ServedModel(cfg.paths.index, None, cfg.paths.prepared)
    if name == "als-explicit":
        return SparkALS(ev.als.rank, ev.als.reg, ev.als.iters, ev.seed, ev.spark_master, ev.spark_driver_memory)
    if name == "als-implicit":
        ia = ev.implicit_als
        return ImplicitAls(ia.ranks[0], ia.regs[0], ia.alphas[0], ia.iters, ev.seed, ev.spark_master,
                           ev.spark_driver_memory)
    if name == "popularity":
        return Popularity()
    raise SystemExit(f"unknown recommender {name}")


def evaluate_one(config: str, overrides: list[str], name: str, sample_users: int, out: Path) -> None:
    """One recommender's evaluation row (``recsys.evaluation.evaluate_recommender``) as JSON."""
    import dataclasses

    from recsys.config import load_config
    from recsys.evaluation import evaluate_recommender, load_data, noise_floor

    cfg = load_config(config, overrides)
    ev = dataclasses.replace(cfg.evaluate, sample_users=sample_users)
    t0 = time.time()
    data = load_data(cfg.paths.prepared)
    load_s = time.time() - t0
    if name == "noise-floor":
        row = {"label": "noise floor (the data's expected ratings)", "test": noise_floor(cfg.paths.prepared, data)}
    else:
        rec = _recommender(name, cfg)
        row = evaluate_recommender(rec, data, ev)
        row.pop("top10", None)
        row["label"] = rec.label
        if name == "model":
            row["history"] = getattr(rec, "history", [])
    row.update(load_seconds=load_s, test_ratings=len(data.test), test_users=int(data.test.u.nunique()))
    out.write_text(json.dumps(row, indent=2, default=float))


def queries(config: str, overrides: list[str], n: int, out: Path) -> None:
    """``n`` known-user top-10 queries through the served library, one at a time."""
    import numpy as np

    from recsys.config import load_config
    from recsys.serving import Recommender

    cfg = load_config(config, overrides)
    t0 = time.time()
    rec = Recommender.load(cfg.paths.index)
    load_s = time.time() - t0
    users = rec.users.user_id.to_numpy()
    pick = np.random.default_rng(0).choice(users, size=n)
    lat = []
    t0 = time.time()
    for u in pick:
        s = time.perf_counter()
        rec.recommend(int(u), k=10)
        lat.append(time.perf_counter() - s)
    wall = time.time() - t0
    lat_ms = np.array(lat) * 1000
    out.write_text(json.dumps({"queries": n, "load_seconds": load_s, "seconds": wall, "per_s": n / wall,
                               "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99))}))


# ---------------------------------------------------------------------------- the run


def _seconds(stages: list[dict], name: str) -> float:
    return next((s["seconds"] for s in stages if s["stage"] == name), float("nan"))


def _fmt(v, digits=4):
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="conf/synth-25m.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override passed to every stage")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reuse-raw", action="store_true", help="keep the raw synthetic files when they exist")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--baseline-users", type=int, default=20_000,
                    help="users the baselines rank (seeded sample; 0: all); the model ranks every user")
    ap.add_argument("--skip", action="append", default=[], help="a stage to skip (its output already there)")
    ap.add_argument("--out", default=None, help="write every figure here as JSON")
    # internal: one evaluation piece / the query batch in its own process
    ap.add_argument("--evaluate-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sample-users", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--queries-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.evaluate_one:
        evaluate_one(args.config, args.overrides, args.evaluate_one, args.sample_users, Path(args.json))
        return 0
    if args.queries_only:
        queries(args.config, args.overrides, args.queries, Path(args.json))
        return 0

    from recsys.config import load_config

    cfg = load_config(args.config, args.overrides)
    sets = [x for o in args.overrides for x in ("--set", o)]
    work = ROOT / "runs" / f"bench-pipeline-{cfg.data.dataset}"
    work.mkdir(parents=True, exist_ok=True)
    py = str(sys.executable)
    stages: list[dict] = []
    started = time.time()

    def stage(name, cmd):
        if name in args.skip:
            print(f"[pipeline] {name}: skipped (--skip)", flush=True)
            return
        stages.append(run_stage(name, cmd, work / f"{name}.log"))

    if args.reuse_raw and (Path(cfg.paths.raw) / "SYNTH.json").is_file():
        print(f"[pipeline] synth: reusing {cfg.paths.raw} (--reuse-raw)", flush=True)
    else:
        stage("synth", [str(BIN / "recsys"), "data", "synth", "--config", args.config, *sets])
    stage("prepare", [str(BIN / "spark-submit"), "jobs/prepare.py", "--config", args.config, *sets])
    stage("train", [str(BIN / "horovodrun"), "-np", str(args.ranks), py, "train.py", "--config", args.config, *sets])
    stage("export", [py, "jobs/export.py", "--config", args.config, *sets])
    stage("index", [py, "jobs/build_index.py", "--config", args.config, *sets])
    rows = {}
    for name, sample in (("model", 0), ("noise-floor", 0), ("als-explicit", args.baseline_users),
                         ("als-implicit", args.baseline_users), ("popularity", args.baseline_users)):
        out = work / f"evaluate-{name}.json"
        out.unlink(missing_ok=True)  # never report an earlier run's figures for a skipped stage
        stage(f"evaluate {name}", [py, __file__, "--config", args.config, *sets, "--evaluate-one", name,
                                   "--sample-users", str(sample), "--json", str(out)])
        rows[name] = json.loads(out.read_text()) if out.is_file() else {}
    out = work / "queries.json"
    out.unlink(missing_ok=True)
    stage("queries", [py, __file__, "--config", args.config, *sets, "--queries-only", "--queries", str(args.queries),
                      "--json", str(out)])
    q = json.loads(out.read_text()) if out.is_file() else {}
    total = time.time() - started

    manifest = json.loads((Path(cfg.paths.prepared) / "manifest.json").read_text())
    model = json.loads((Path(cfg.paths.model) / "model.json").read_text())
    exported = json.loads((Path(cfg.paths.vectors) / "vectors.json").read_text())  # its user and movie counts
    ratings_read = manifest["accounting"]["ratings"]["rows_read"]
    n_train = manifest["stats"]["train_ratings"]
    hist = model.get("history", [])
    best_i = min(range(len(hist)), key=lambda i: hist[i]["valid_selection"]) if hist else None
    throughput = {
        "synth": f"{cfg.synth.ratings:,} ratings",
        "prepare": f"{ratings_read:,} rating lines, {ratings_read / max(_seconds(stages, 'prepare'), 1e-9):,.0f}/s",
        "train": (f"{n_train:,} examples/epoch; {len(hist)} epochs at "
                  + ", ".join(f"{h['examples_per_s']:,.0f}" for h in hist) + " examples/s" if hist else "-"),
        "export": f"{exported.get('users', 0):,} users, {exported.get('movies', 0):,} movies",
        "queries": f"{q.get('per_s', 0):,.0f} queries/s, p50 {q.get('p50_ms', 0):.2f} ms, p99 {q.get('p99_ms', 0):.2f} ms",
    }
    print()
    print(f"Pipeline: {args.config} ({' '.join(args.overrides) or 'no overrides'}), {args.ranks} ranks, "
          f"{total / 60:.1f} min wall in all; peak RSS of any stage "
          f"{max(s['peak_rss_mib'] for s in stages) / 1024:.1f} GiB")
    print()
    print("| stage | wall s | peak RSS MiB | throughput |")
    print("|---|---:|---:|---|")
    for s in stages:
        print(f"| {s['stage']} | {s['seconds']:.0f} | {s['peak_rss_mib']:,.0f} | "
              f"{throughput.get(s['stage'].split(' ')[0] if s['stage'] != 'queries' else 'queries', '')} |")
    print(f"| **all** | **{total:.0f}** | {max(s['peak_rss_mib'] for s in stages):,.0f} | |")
    print()
    print("| recommender | RMSE | NDCG@10 | NDCG@10 95% CI | users ranked | fit / time to best validation s |")
    print("|---|---:|---:|---|---:|---|")
    for name, r in rows.items():
        if not r:
            continue
        t = r.get("test") or {}
        rank = r.get("ranking") or {}
        ci = r.get("ndcg@10_ci95")
        if name == "model" and best_i is not None:
            to_best = (f"best validation at epoch {best_i + 1} of {len(hist)}, after "
                       f"{sum(h['seconds'] for h in hist[:best_i + 1]):.0f} s of training epochs")
        elif "fit_seconds" in r:
            to_best = f"{r['fit_seconds']:.0f} s fit (one fit, config settings)"
        else:
            to_best = "-"
        print(f"| {r.get('label', name)} | {_fmt(t.get('rmse'))} | {_fmt(rank.get('ndcg@10'))} | "
              f"{'-' if not ci else f'[{ci[0]:.4f}, {ci[1]:.4f}]'} | {r.get('ranking_users', '-')} | {to_best} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides, "ranks": args.ranks,
                                              "total_seconds": total, "stages": stages, "evaluation": rows,
                                              "queries": q, "train_examples": n_train}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
