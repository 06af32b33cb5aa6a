#!/usr/bin/env python
"""Every model kind on one split, side by side in one report.

    python bench/bench_models.py --config conf/ml-100k.yaml --ranks 2 [--kinds rating,bpr] [--fast]
        [--set model.lightgcn.layers=2 ...] [--kind-set lightgcn:train.learning_rate=0.0025 ...]

For each kind (default: every kind of ``recsys.models.REGISTRY``): ``horovodrun -np R python
train.py --config C --set model.kind=K`` into ``<paths.model>-<kind>`` (a plain process for
R=1), then one ``recsys.evaluation.evaluate`` run with every trained model exported and
indexed as served, and every baseline, into ``<paths.report>-models``. Prints a markdown table
per model: what it was selected on, epochs run (best), rank 0's training seconds, the median
examples/s after the first epoch (all ranks together), and the report's test figures; writes
the same to ``<paths.report>-models/models.json``.

The prepared data (``spark-submit jobs/prepare.py --config ...``) must exist.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_quality import train  # noqa: E402

COLUMNS = [("RMSE", "test", "rmse"), ("P@10", "ranking", "precision@10"), ("R@10", "ranking", "recall@10"),
           ("NDCG@10", "ranking", "ndcg@10"), ("HR@10", "ranking", "hit_rate@10"),
           ("NDCG@10 (liked)", "ranking", "ndcg@10_rel4"), ("coverage", None, "coverage@10")]


def trained_summary(model_dir: Path) -> dict:
    info = json.loads((model_dir / "model.json").read_text())
    history = json.loads((model_dir / "history.json").read_text())
    rates = [r["examples_per_s"] for r in history[1:]] or [r["examples_per_s"] for r in history]
    metric = info.get("validation_metric", "?")
    best = min(history, key=lambda r: r["valid_selection"])
    return {"kind": info["kind"], "selected_on": metric, "best_valid": best.get(f"valid_{metric}"),
            "epochs": len(history), "best_epoch": best["epoch"], "train_seconds": info.get("train_seconds"),
            "examples_per_s": statistics.median(rates)}


def main() -> None:
    from recsys.config import load_config
    from recsys.evaluation import evaluate, served_directory
    from recsys.models import REGISTRY, model_class

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--kinds", default=",".join(REGISTRY), help="comma-separated model kinds (default: all)")
    ap.add_argument("--seed", type=int, default=1, help="train.seed of every model")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every training (repeatable)")
    ap.add_argument("--kind-set", dest="kind_overrides", action="append", default=[], metavar="KIND:KEY=VALUE",
                    help="config override for one kind's training only (repeatable), e.g. lightgcn:train.learning_rate=0.0025")
    ap.add_argument("--fast", action="store_true", help="skip the slow baselines (Surprise SVD++, Spark ALS)")
    ap.add_argument("--reuse", action="store_true", help="evaluate models already trained in <paths.model>-<kind> "
                    "(the overrides reported are this command's)")
    args = ap.parse_args()
    cfg = load_config(ROOT / args.config, args.overrides)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in REGISTRY]
    if unknown:
        sys.exit(f"error: unknown model kind(s) {unknown}; known: {', '.join(REGISTRY)}")
    per_kind: dict[str, list[str]] = {}
    for item in args.kind_overrides:
        kind, sep, setting = item.partition(":")
        if not sep or kind not in kinds or "=" not in setting:
            sys.exit(f"error: --kind-set {item!r}: expected KIND:KEY=VALUE with KIND one of {', '.join(kinds)}")
        per_kind.setdefault(kind, []).append(setting)
    report = Path(cfg.paths.report + "-models")
    report.mkdir(parents=True, exist_ok=True)
    served, rows, skipped = {}, {}, {}
    for kind in kinds:
        model_dir = Path(cfg.paths.model + f"-{kind}")
        if not (args.reuse and (model_dir / "model.json").is_file()):
            extra = list(args.overrides) + per_kind.get(kind, []) + [f"model.kind={kind}"]
            try:
                secs = train(args.config, model_dir, args.seed, args.ranks, extra)
            except SystemExit as failed:  # one kind that cannot train here (e.g. a graph above its limit) is a row
                print(f"[bench] {kind}: skipped, training failed: {str(failed.code)[-600:]}", file=sys.stderr, flush=True)
                skipped[kind] = str(failed.code)[-600:]
                continue
            print(f"[bench] {kind}: trained on {args.ranks} rank(s) in {secs:.0f}s wall", file=sys.stderr, flush=True)
        rows[kind] = trained_summary(model_dir) | {"overrides": per_kind.get(kind, [])}
        label = model_class(kind).label
        served[label] = served_directory(model_dir, cfg, report / f"served-{kind}")
    metrics = evaluate(cfg.paths.prepared, served, report, include_slow=not args.fast, settings=cfg.evaluate)
    for kind in rows:
        result = metrics["results"][model_class(kind).label]
        rows[kind]["test"] = {name: (result.get(section, {}) if section else result).get(key)
                              for name, section, key in COLUMNS}
        rows[kind]["ranked_by"] = result.get("ranked_by")
    best = metrics.get("best_baseline", {})
    out = {"config": args.config, "ranks": args.ranks, "overrides": args.overrides, "models": rows, "skipped": skipped,
           "best_baseline": best, "report": str(report / "report.md")}
    (report / "models.json").write_text(json.dumps(out, indent=2))
    head = "| model | selected on (best) | epochs (best) | train s | examples/s | " + " | ".join(c for c, _, _ in COLUMNS) + " |"
    print(head)
    print("|" + "---|" * (5 + len(COLUMNS)))
    for kind, r in rows.items():
        vals = " | ".join("-" if v is None else f"{v:.4f}" for v in r["test"].values())
        tuned = "".join(f" `{o}`" for o in r["overrides"])
        print(f"| {model_class(kind).label} (`{kind}`){tuned} | valid {r['selected_on']} {r['best_valid']:.4f} | "
              f"{r['epochs']} ({r['best_epoch']}) | {r['train_seconds'] or 0:.0f} | {r['examples_per_s']:,.0f} | {vals} |")
    for kind, why in skipped.items():
        print(f"| {model_class(kind).label} (`{kind}`) | skipped: {why.splitlines()[-1] if why else '?'} |")
    print(f"\nreport: {report / 'report.md'}")


if __name__ == "__main__":
    main()
