#!/usr/bin/env python
"""Load test of ``recsys serve`` on localhost: p50/p99 latency and throughput of a known user's
top 10 at 1, 16 and 64 concurrent clients, errors counted.

    python bench/bench_service.py --index runs/ml-100k/index --workers 1 --workers 2

Starts the real server (``recsys serve``, uvicorn) on 127.0.0.1 for each worker count, warms
it, then drives ``GET /api/users/{id}/recommendations?k=10`` over keep-alive HTTP/1.1
connections from one asyncio client process (users cycled over the whole catalog). Each
level is bounded by ``--requests`` and ``--seconds``, whichever comes first. An error is any
non-200 answer, a malformed one, or a broken connection. The same lookups through the
library in process (no HTTP) are measured beside it, as the floor. Prints Markdown rows for
docs/benchmarks.md. Localhost only: the server binds 127.0.0.1 and the client connects there.
"""

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOST = "127.0.0.1"
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.I)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(index: str, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", "--index", index, "--host", HOST,
                             "--port", str(port), "--workers", str(workers), "--set", "serve.reload_interval_s=0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    ready = 0
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            # every worker must have loaded the index: ask several times over fresh connections
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                ready = ready + 1 if r.status == 200 else 0
            if ready >= 4 * workers:
                return proc, port
        except OSError:
            ready = 0
        time.sleep(0.25)
    proc.kill()
    sys.exit("server not ready in 240 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


async def _client(port: int, paths: list[bytes], start: int, quota: int, deadline: float,
                  latencies: list[float], errors: list[str]) -> None:
    reader = writer = None
    for i in range(quota):
        if time.perf_counter() > deadline:
            break
        request = paths[(start + i) % len(paths)]
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(int(_LENGTH.search(head).group(1)))
            latencies.append(time.perf_counter() - t0)
            if head[9:12] != b"200" or not body.startswith(b'{"user_id"'):
                errors.append(head[:12].decode(errors="replace"))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError) as err:
            errors.append(repr(err))
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _level(port: int, paths: list[bytes], clients: int, requests: int, seconds: float):
    latencies: list[float] = []
    errors: list[str] = []
    per_client = max(1, requests // clients)
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, paths, c * 7919, per_client, deadline, latencies, errors)
                           for c in range(clients)))
    return latencies, errors, time.perf_counter() - t0


def run_level(port: int, paths: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    try:
        import uvloop  # the client loop should not be the bottleneck
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    lat, errors, wall = runner(_level(port, paths, clients, requests, seconds))
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat) + sum(1 for e in errors if not e.startswith("HTTP")),
            "errors": len(errors), "rps": len(lat) / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "first_errors": errors[:3]}


def library_floor(index: str, users: np.ndarray, n: int) -> dict:
    """The same top-10 lookups through recsys.serving.Recommender in this process."""
    from recsys.serving import Recommender

    rec = Recommender.load(index)
    for u in users[:200]:
        rec.recommend(int(u), k=10)
    times = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        rec.recommend(int(users[i % len(users)]), k=10)
        times.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    ms = np.array(times) * 1000
    return {"clients": 1, "requests": n, "errors": 0, "rps": n / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="runs/ml-100k/index")
    ap.add_argument("--workers", type=int, action="append", help="uvicorn workers (repeatable) [1]")
    ap.add_argument("--clients", type=int, action="append", help="concurrent clients (repeatable) [1, 16, 64]")
    ap.add_argument("--requests", type=int, default=20_000, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per level at most")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    users = pd.read_parquet(Path(args.index) / "users.parquet", columns=["user_id"]).user_id.to_numpy()
    rng = np.random.default_rng(0)
    order = rng.permutation(users)
    paths = [f"GET /api/users/{u}/recommendations?k={args.k} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
             for u in order]
    print(f"# {len(users):,} users cycled; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start")
    print("| path | workers | clients | requests | errors | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    floor = library_floor(args.index, order, min(args.requests, 20_000))
    print(f"| library in process (no HTTP) | - | 1 | {floor['requests']:,} | 0 | {floor['rps']:,.0f} | "
          f"{floor['p50']:.3f} | {floor['p99']:.3f} |", flush=True)
    for workers in args.workers or [1]:
        proc, port = start_server(args.index, workers)
        try:
            run_level(port, paths, 8, 1000, 10)   # warm-up: connections, caches
            for clients in args.clients or [1, 16, 64]:
                r = run_level(port, paths, clients, args.requests, args.seconds)
                print(f"| HTTP `GET /api/users/{{id}}/recommendations?k={args.k}` | {workers} | {clients} | "
                      f"{r['requests']:,} | {r['errors']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} |",
                      flush=True)
                if r["errors"]:
                    print(f"#   first errors: {r['first_errors']}", flush=True)
        finally:
            stop_server(proc)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
