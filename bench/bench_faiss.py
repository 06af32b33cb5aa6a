#!/usr/bin/env python
"""Benchmark top-10 retrieval: FAISS Flat vs the served approximate index vs numpy brute force.

    python bench/bench_faiss.py --config conf/ml-100k.yaml --catalog runs/ml-100k/vectors --synthetic 1000000

What is measured is what is served: the recommendation index ``movies_ip`` as
jobs/build_index.py builds it from the config (with the default retrieval ranking, movies as
``[m, m_r, T (c_m + g log q_m)]`` and users as ``[u, u_r, 1]``: output_dim + retrieval_dim + 1 = 65 wide), with
the config's ``index.approximate`` factory (HNSW32 by default), built and tuned by
recsys.indexing.build_index exactly as the index job does. Collections: the exported ML-100K
movies (``--catalog``), and synthetic vectors of the same width drawn from a clustered Gaussian
mixture, as learnt vectors are clustered. For each: build time and memory, single-query p50/p99
latency, batch queries/s for top-10, and recall@10 against exact search. Prints Markdown rows
for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.indexing import build_index, exact_topk, recall_at_k  # noqa: E402


def clustered(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 1_000_000):
        e = min(n, s + 1_000_000)
        out[s:e] = centers[rng.integers(0, clusters, e - s)] + 0.5 * rng.normal(size=(e - s, d)).astype(np.float32)
    return out


def numpy_search(base: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return exact_topk(base, q, k)


def time_single(search, queries: np.ndarray, n: int = 200) -> tuple[float, float]:
    lat = []
    for q in queries[:n]:
        t = time.perf_counter()
        search(q[None, :])
        lat.append(time.perf_counter() - t)
    return float(np.percentile(lat, 50) * 1e3), float(np.percentile(lat, 99) * 1e3)


def time_batch(search, queries: np.ndarray) -> float:
    t = time.perf_counter()
    search(queries)
    return len(queries) / (time.perf_counter() - t)


def bench(name: str, base: np.ndarray, queries: np.ndarray, factory: str, k: int = 10) -> None:
    import faiss

    rss0 = psutil.Process().memory_info().rss
    truth = exact_topk(base, queries[:500], k)
    rows = []
    t = time.time()
    flat = faiss.IndexFlatIP(base.shape[1]); flat.add(base)
    rows.append(("FAISS Flat (exact)", flat, time.time() - t, lambda q: flat.search(q, k)[1]))
    approx = build_index(base, queries, flat_max=0, factory=factory, target_recall=0.95, k=k, sample=1000)
    rows.append((f"FAISS {factory} {approx.search_param}", approx.index, approx.build_seconds,
                 lambda q: approx.index.search(q, k)[1]))
    rows.append(("numpy argpartition", None, 0.0, lambda q: numpy_search(base, q, k)))
    batch = queries[:2000] if len(base) > 2_000_000 else queries[:10000]
    for label, index, build_s, search in rows:
        p50, p99 = time_single(search, queries, 100 if len(base) > 2_000_000 else 300)
        qps = time_batch(search, batch)
        rec = recall_at_k(search(queries[:500]), truth)
        mem = (index.ntotal * index.d * 4 / 2**20) if label.startswith("FAISS Flat") else (
            faiss.serialize_index(index).nbytes / 2**20 if index is not None else base.nbytes / 2**20)
        print(f"| {name} | {len(base):,} x {base.shape[1]} | {label} | {build_s:.1f} | {mem:,.0f} | {p50:.3f} | "
              f"{p99:.3f} | {qps:,.0f} | {rec:.3f} |", flush=True)
    del rss0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", default=None, help="a vectors/ directory from jobs/export.py")
    parser.add_argument("--synthetic", type=int, action="append", default=[])
    parser.add_argument("--config", default="conf/ml-100k.yaml", help="the config whose index is measured")
    parser.add_argument("--factory", action="append", default=[],
                        help="approximate index to measure (repeatable) [config index.approximate]")
    args = parser.parse_args()
    import faiss

    from recsys.config import load_config

    cfg = load_config(args.config)
    from recsys.models import model_class

    # the configured model's served movie vectors: their width from the contract (RecModel.vector_widths)
    dim = model_class(cfg.model.kind).vector_widths(cfg.model)["rank"]
    form = f"{cfg.model.kind} rank vectors"
    factories = args.factory or [cfg.index.approximate]

    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores, faiss {faiss.__version__}, "
          f"omp threads {faiss.omp_get_max_threads()}")
    print("| collection | vectors | method | build s | index MiB | p50 ms | p99 ms | batch q/s | recall@10 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    if args.catalog:
        from recsys.export import load_vectors

        v = load_vectors(args.catalog)
        base, q = v["movies"]["rank"], v["users"]["rank"]  # what movies_ip serves (the model's rank vectors)
        q = np.concatenate([q] * (10000 // len(q) + 1))[:10000]
        for factory in factories:
            bench(f"ML-100K movies, {v['info']['kind']} rank vectors", base, q, factory)
    for n in args.synthetic:
        base = clustered(n, dim, seed=1)
        q = clustered(10000, dim, seed=2)
        for factory in factories:
            bench(f"synthetic clustered {form}", base, q, factory)
        del base


if __name__ == "__main__":
    main()
