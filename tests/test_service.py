"""`recsys serve` (HTTP API, page, metrics, hot swap) and the serving CLI, against a real index.

The index is built from the shared small synthetic dataset (conftest ``train_data``): a
1-rank training run of a small model, export, FAISS indexes. The server is the real CLI
(``recsys serve``, uvicorn) on a free localhost port; the page runs in headless Chromium.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.config import load_config
from tests.conftest import ENV, ROOT, train_cmd

pytestmark = pytest.mark.slow
RECSYS = [sys.executable, "-m", "recsys.cli"]


@pytest.fixture(scope="module")
def index_dir(train_data, tmp_path_factory) -> Path:
    """A serving directory: small model trained 3 epochs on 1 rank, exported, indexed."""
    from recsys.export import export_vectors
    from recsys.serving import build_serving_dir

    base, overrides = train_data
    d = tmp_path_factory.mktemp("service")
    proc = subprocess.run(train_cmd(overrides, 1, d / "model", "--set", "train.epochs=3"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(ROOT / "conf/default.yaml", overrides + [f"paths.model={d / 'model'}",
                                                               f"paths.vectors={d / 'vectors'}",
                                                               f"paths.index={d / 'index'}"])
    export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
    build_serving_dir(cfg)
    return Path(cfg.paths.index)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`recsys serve` in a subprocess, with small JSON helpers over one keep-alive connection."""

    def __init__(self, index: Path, *extra: str, cwd: Path = ROOT):
        self.port = _free_port()
        self.log = open(Path(index).parent / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([*RECSYS, "serve", "--index", str(index), "--port", str(self.port), *extra],
                                     env=ENV, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server not ready in 180 s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-5000:]

    def request(self, method: str, path: str, body: str | bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read().decode()
            ctype = resp.getheader("content-type", "")
            return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, payload) -> tuple[int, dict]:
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        return self.request("POST", path, body, {"Content-Type": "application/json"})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(index_dir):
    srv = Server(index_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def seen(index_dir) -> pd.DataFrame:
    return pd.read_parquet(index_dir / "seen.parquet")


# ------------------------------------------------------------------ the API


def test_every_route_answers(server, index_dir, seen):
    from recsys.serving import Recommender

    rec = Recommender.load(index_dir)
    user, movie = int(rec.users.user_id.iloc[3]), int(rec.movies.movie_id.iloc[5])
    status, body = server.get(f"/api/users/{user}/recommendations?k=7")
    assert status == 200 and len(body["items"]) == 7
    # the same list as the library, in the same (ranking) order, with ratings clipped to the scale
    lib = rec.recommend(user, k=7)
    assert [i["movie_id"] for i in body["items"]] == [r["movie_id"] for r in lib]
    assert [i["rank"] for i in body["items"]] == list(range(1, 8))
    lo, hi = rec.info["rating_range"]
    for item, r in zip(body["items"], lib):
        assert item["raw_prediction"] == pytest.approx(r["score"], abs=1e-3)
        assert item["predicted_rating"] == pytest.approx(min(max(r["score"], lo), hi), abs=1e-3)
        assert item["genres"] == r["genres"].split("|")
    assert not {i["movie_id"] for i in body["items"]} & set(seen[seen.user_id == user].movie_id)
    status, body = server.get(f"/api/users/{user}/recommendations?k=3&include_seen=true")
    assert status == 200 and [i["movie_id"] for i in body["items"]] == \
        [r["movie_id"] for r in rec.recommend(user, k=3, exclude_seen=False)]

    status, body = server.get(f"/api/users/{user}")
    assert status == 200 and body["rated_count"] == (seen.user_id == user).sum() > 0
    assert {r["movie_id"] for r in body["rated"]} <= set(seen[seen.user_id == user].movie_id)
    status, body = server.get(f"/api/users/{user}/predictions/{movie}")
    assert status == 200 and body["raw_prediction"] == pytest.approx(rec.predict(user, movie), abs=1e-3)

    status, body = server.get(f"/api/movies/{movie}")
    assert status == 200 and body["title"] == rec.movies.title.iloc[5]
    status, body = server.get(f"/api/movies/{movie}/similar?k=5")
    assert status == 200 and [i["movie_id"] for i in body["items"]] == [r["movie_id"] for r in rec.similar_movies(movie, k=5)]
    assert all("similarity" in i and "predicted_rating" not in i for i in body["items"])
    status, body = server.get(f"/api/movies/{movie}/fans?k=5")
    assert status == 200 and len(body["items"]) == 5
    assert not {u["user_id"] for u in body["items"]} & set(seen[seen.movie_id == movie].user_id)
    status, body = server.get(f"/api/movies/{movie}/also-liked?k=4")
    assert status == 200 and len(body["items"]) == 4 and movie not in [i["movie_id"] for i in body["items"]]

    status, cat = server.get("/api/catalog")
    assert status == 200 and cat["users"] == len(rec.users) and cat["genres"] and cat["occupations"]
    status, body = server.post("/api/new-user/recommendations",
                               {"gender": cat["genders"][0], "age": 30, "occupation": cat["occupations"][0], "k": 6})
    assert status == 200 and len(body["items"]) == 6
    status, body = server.post("/api/new-movie/similar", {"title": "Night of the Cats", "genres": cat["genres"][:2],
                                                          "year": 1999, "k": 5})
    assert status == 200 and len(body["items"]) == 5
    status, body = server.post("/api/new-movie/fans", {"title": "Night of the Cats", "genres": cat["genres"][:1]})
    assert status == 200 and len(body["items"]) == 10 and all(lo <= u["predicted_rating"] <= hi for u in body["items"])
    status, body = server.get("/api/movies?q=" + rec.movies.title.iloc[0][:4])
    assert status == 200 and body["total"] >= 1
    status, body = server.get("/api/users?offset=2&limit=3")
    assert status == 200 and body["user_ids"] == [int(x) for x in rec.users.user_id.iloc[2:5]]

    assert server.get("/healthz") == (200, {"status": "ok"})
    status, ready = server.get("/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["index_version"] == rec.info["sha256"]
    status, spec = server.get("/openapi.json")
    assert status == 200 and "/api/users/{user_id}/recommendations" in spec["paths"]
    status, page = server.get("/")
    assert status == 200 and "<title>recsys" in page
    assert server.get("/docs")[0] == 200 and server.get("/static/app.js")[0] == 200


BAD_REQUESTS = [
    # (method, path, body, status, a piece of the message)
    ("GET", "/api/users/abc/recommendations", None, 400, "user_id"),
    ("GET", "/api/users/1.5/recommendations", None, 400, "user_id"),
    ("GET", "/api/movies/x/similar", None, 400, "movie_id"),
    ("GET", "/api/users/{user}/recommendations?k=0", None, 400, "k must be an integer from 1 to 100, got 0"),
    ("GET", "/api/users/{user}/recommendations?k=1000000000", None, 400, "k must be an integer from 1 to 100"),
    ("GET", "/api/users/{user}/recommendations?k=ten", None, 400, "k"),
    ("GET", "/api/users/{user}/recommendations?k=99999999999999999999999", None, 400, "k"),
    ("GET", "/api/movies/{movie}/similar?k=-3", None, 400, "k must be an integer"),
    ("GET", "/api/users/987654/recommendations", None, 404, "unknown user id 987654"),
    ("GET", "/api/users/987654", None, 404, "unknown user id 987654"),
    ("GET", "/api/movies/987654/similar", None, 404, "unknown movie id 987654"),
    ("GET", "/api/movies/987654/fans", None, 404, "unknown movie id 987654"),
    ("GET", "/api/movies/987654", None, 404, "unknown movie id"),
    ("GET", "/api/users/{user}/predictions/987654", None, 404, "unknown movie id 987654"),
    ("GET", "/api/nothing-here", None, 404, "Not Found"),
    ("POST", "/api/new-user/recommendations", "{not json", 400, "JSON"),
    ("POST", "/api/new-user/recommendations", "[1, 2]", 400, "body"),
    ("POST", "/api/new-user/recommendations", {"occupation": "astronaut"}, 400, "occupation must be one of"),
    ("POST", "/api/new-user/recommendations", {"gender": "X"}, 400, "gender must be one of"),
    ("POST", "/api/new-user/recommendations", {"age": "old"}, 400, "age"),
    ("POST", "/api/new-user/recommendations", {"age": 400}, 400, "age must be an integer from 1 to 120"),
    ("POST", "/api/new-user/recommendations", {"ocupation": "writer"}, 400, "ocupation"),
    ("POST", "/api/new-user/recommendations", {"k": 0}, 400, "k must be an integer from 1 to 100"),
    ("POST", "/api/new-movie/similar", {"title": "X", "genres": ["Space Opera"]}, 400, "unknown genre(s) ['Space Opera']"),
    ("POST", "/api/new-movie/similar", {"title": "", "genres": []}, 400, "title must be a non-empty string"),
    ("POST", "/api/new-movie/fans", {"genres": ["Drama"]}, 400, "title"),
    ("POST", "/api/new-movie/fans", {"title": "X", "genres": "Drama"}, 400, "genres"),
    ("GET", "/api/new-user/recommendations", None, 405, "Method Not Allowed"),
    ("POST", "/admin/index", {"index": "/no/such/dir"}, 400, "index.json not found"),
    ("POST", "/admin/index", {"directory": "x"}, 400, "index"),
]


@pytest.mark.parametrize("case", range(len(BAD_REQUESTS)), ids=[f"{m} {p}" for m, p, *_ in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_with_a_message(server, index_dir, case):
    from recsys.serving import Recommender

    method, path, body, want, message = BAD_REQUESTS[case]
    rec = Recommender.load(index_dir)
    path = path.format(user=int(rec.users.user_id.iloc[0]), movie=int(rec.movies.movie_id.iloc[0]))
    if method == "GET":
        status, reply = server.get(path)
    else:
        status, reply = server.post(path, body)
    assert status == want, (status, reply)
    assert isinstance(reply, dict) and message in reply["detail"], reply


def test_metrics_count_requests_by_route_and_status(server):
    server.get("/api/users/abc/recommendations")
    server.get("/healthz")
    status, text = server.get("/metrics")
    assert status == 200
    lines = text.splitlines()
    bad = [ln for ln in lines if ln.startswith("recsys_http_requests_total{")
           and 'route="/api/users/{user_id}/recommendations"' in ln and 'status="400"' in ln]
    assert bad and float(bad[0].split()[-1]) >= 1
    assert any(ln.startswith("recsys_http_request_duration_seconds_bucket{") and 'route="/healthz"' in ln
               for ln in lines)
    assert not any('status="500"' in ln for ln in lines if ln.startswith("recsys_http_requests_total"))


def _reseal_copy(src: Path, dst: Path) -> str:
    """A copy of an index with a different version (index.json re-sealed): what a rebuild gives."""
    from recsys.checksums import json_digest

    shutil.copytree(src, dst)
    info = json.loads((dst / "index.json").read_text())
    info["note"] = f"copy {dst.name}"
    info.pop("sha256")
    info["sha256"] = json_digest(info)
    (dst / "index.json").write_text(json.dumps(info))
    return info["sha256"]


def test_hot_swap_under_load_fails_no_request(index_dir, tmp_path):
    """16 clients hammer a known user's top 10 while the server is pointed at two other index
    directories (POST /admin/index) and back; bounded to 90 s. No request may fail."""
    versions = [_reseal_copy(index_dir, tmp_path / f"index-{i}") for i in (1, 2)]
    srv = Server(index_dir, "--set", "serve.reload_interval_s=0")
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    user = int(pd.read_parquet(index_dir / "users.parquet", columns=["user_id"]).user_id.iloc[0])

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("GET", f"/api/users/{user}/recommendations?k=10")
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and len(json.loads(body)["items"]) == 10
                outcome = (resp.status if ok else -resp.status, "")
            except Exception as err:  # noqa: BLE001 - a failed request is what we count
                outcome = (0, repr(err))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            with lock:
                results.append(outcome)
        conn.close()

    try:
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        t_end = time.time() + 90
        seen_versions = []
        for target, version in [(tmp_path / "index-1", versions[0]), (tmp_path / "index-2", versions[1]),
                                (index_dir, None)]:
            time.sleep(1.0)
            status, reply = srv.post("/admin/index", {"index": str(target)})
            assert status == 200, reply
            status, ready = srv.get("/readyz")
            seen_versions.append(ready["index_version"])
            assert ready["index"] == str(target.resolve())
            if version:
                assert ready["index_version"] == version
            assert time.time() < t_end
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.stop()
    failures = [r for r in results if r[0] != 200]
    assert len(results) > 200, len(results)
    assert not failures, (len(failures), failures[:5])
    assert len(set(seen_versions)) == 3


def test_two_workers_follow_the_admin_swap_and_share_metrics(index_dir, tmp_path):
    """With --workers 2, POST /admin/index reaches one worker; the other follows through the
    state file within the reload interval, and /metrics sums both workers' counters."""
    v1 = _reseal_copy(index_dir, tmp_path / "v1")
    srv = Server(index_dir, "--workers", "2", "--set", "serve.reload_interval_s=0.5")
    try:
        deadline, streak = time.time() + 120, 0
        while streak < 8 and time.time() < deadline:   # both workers loaded (a new connection lands on either)
            streak = streak + 1 if srv.get("/readyz")[0] == 200 else 0
            time.sleep(0.1)
        assert streak >= 8, "the second worker never loaded the index"
        status, reply = srv.post("/admin/index", {"index": str(tmp_path / "v1")})
        assert status == 200, reply
        deadline, streak = time.time() + 30, 0
        while streak < 20 and time.time() < deadline:
            streak = streak + 1 if srv.get("/readyz")[1]["index_version"] == v1 else 0
        assert streak >= 20, "a worker still serves the old index"
        for _ in range(10):
            srv.get("/api/users/abc/recommendations")
        text = srv.get("/metrics")[1]
        bad = [ln for ln in text.splitlines() if ln.startswith("recsys_http_requests_total{")
               and 'status="400"' in ln and "recommendations" in ln]
        assert bad and sum(float(ln.split()[-1]) for ln in bad) == 10
    finally:
        srv.stop()


def test_watcher_swaps_in_a_rebuilt_index_and_keeps_a_broken_one_out(index_dir, tmp_path):
    """--index names a symlink: repointing it (an atomic rename) swaps the index within the
    reload interval; a target whose checksums fail is refused and the old index keeps serving."""
    v1 = _reseal_copy(index_dir, tmp_path / "v1")
    v2 = _reseal_copy(index_dir, tmp_path / "v2")
    broken = tmp_path / "broken"
    _reseal_copy(index_dir, broken)
    (broken / "movies.parquet").write_bytes(b"garbage")
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "v1")
    srv = Server(link, "--set", "serve.reload_interval_s=0.5")

    def repoint(target: Path) -> None:
        tmp = tmp_path / "current.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, link)

    def wait_for(pred, what: str):
        deadline = time.time() + 30
        while time.time() < deadline:
            status, ready = srv.get("/readyz")
            if pred(ready):
                return ready
            time.sleep(0.2)
        raise AssertionError(f"{what}: {ready}")

    try:
        assert srv.get("/readyz")[1]["index_version"] == v1
        repoint(tmp_path / "v2")
        wait_for(lambda r: r["index_version"] == v2, "no swap to v2")
        repoint(broken)
        ready = wait_for(lambda r: r["last_error"] and "movies.parquet" in r["last_error"], "broken index not reported")
        assert ready["index_version"] == v2 and srv.get("/api/users?limit=1")[0] == 200
    finally:
        srv.stop()


# ------------------------------------------------------------------ the page, in a real browser


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not binary or not driver:
        pytest.skip("no chromium/chromedriver: `make test` run as root installs Debian's chromium and "
                    "chromium-driver (scripts/run_tests.sh), or apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_page_in_a_headless_browser(server, index_dir, seen, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from recsys.serving import Recommender

    rec = Recommender.load(index_dir)
    user = int(rec.users.user_id.iloc[7])
    browser = _chrome()
    wait = WebDriverWait(browser, 30)

    def rows(table: str, n: int):
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, f"{table} tbody tr")) == n)
        return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in browser.find_elements(By.CSS_SELECTOR, f"{table} tbody tr")]

    try:
        browser.get(server.url + "/")
        wait.until(lambda b: "users" in b.find_element(By.ID, "status").text)
        # a user: rated movies beside recommendations, with predicted ratings and genres
        box = browser.find_element(By.ID, "user-id")
        box.clear()
        box.send_keys(str(user))
        browser.find_element(By.ID, "user-go").click()
        recs = rows("#user-recs", 10)
        want = rec.recommend(user, k=10)
        assert [r[1] for r in recs] == [w["title"] for w in want]
        lo, hi = rec.info["rating_range"]
        assert all(lo <= float(r[3]) <= hi for r in recs)
        assert recs[0][2].split() == want[0]["genres"].split("|") or recs[0][2]
        rated = rows("#user-rated", min(100, int((seen.user_id == user).sum())))
        assert {r[0] for r in rated} <= set(rec.movies.title)
        browser.save_screenshot(str(tmp_path / "page-user.png"))
        # click a recommended title: the movie view, similar movies and who would like it
        browser.find_element(By.CSS_SELECTOR, "#user-recs tbody tr td a").click()
        similar = rows("#movie-similar", 10)
        fans = rows("#movie-fans", 10)
        first = want[0]["movie_id"]
        assert [r[1] for r in similar] == [s["title"] for s in rec.similar_movies(first, k=10)]
        assert [int(r[1]) for r in fans] == [u["user_id"] for u in rec.users_for_movie(first, k=10)]
        browser.save_screenshot(str(tmp_path / "page-movie.png"))
        # the new-user form
        browser.find_element(By.ID, "tab-new-user").click()
        Select(browser.find_element(By.ID, "nu-occupation")).select_by_index(2)
        browser.find_element(By.ID, "nu-go").click()
        assert len(rows("#nu-recs", 10)) == 10
        # the new-movie form
        browser.find_element(By.ID, "tab-new-movie").click()
        browser.find_element(By.CSS_SELECTOR, "#nm-genres input").click()
        browser.find_element(By.ID, "nm-go").click()
        assert len(rows("#nm-similar", 10)) == 10 and len(rows("#nm-fans", 10)) == 10
        browser.save_screenshot(str(tmp_path / "page-new-movie.png"))
        # a mistake shows the API's message on the page
        browser.find_element(By.ID, "tab-user").click()
        box = browser.find_element(By.ID, "user-id")
        box.clear()
        box.send_keys("987654")
        browser.find_element(By.ID, "user-go").click()
        wait.until(EC.visibility_of_element_located((By.ID, "error")))
        assert "unknown user id 987654" in browser.find_element(By.ID, "error").text
    finally:
        browser.quit()
    for name in ("page-user.png", "page-movie.png", "page-new-movie.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    print(f"screenshots: {tmp_path}")


# ------------------------------------------------------------------ the serving CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*RECSYS, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_cli_with_index_alone_runs_from_another_folder(index_dir, tmp_path):
    # no conf/ here: --index is enough, cold start finds the model recorded in the index
    proc = _cli("recommend", "--index", str(index_dir), "--user", "1", "-k", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[1]
    assert "predicted rating" in header and "score" not in header
    cat = json.loads((index_dir / "model" / "vocabularies.json").read_text())
    proc = _cli("recommend", "--index", str(index_dir), "--occupation", cat["occupation"][0], "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["rank"] for r in json.loads(proc.stdout)] == list(range(1, 11))
    proc = _cli("recommend", "--index", str(index_dir), "--user", "987654", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown user id 987654")
    assert "recommend_for_profile" not in proc.stderr and "--gender/--age/--occupation" in proc.stderr


def test_cold_start_works_from_a_moved_index(index_dir, tmp_path):
    # the model artifact travels inside the index directory: a copy elsewhere still serves cold start
    moved = tmp_path / "moved-run"
    shutil.copytree(index_dir, moved / "index")
    occupation = json.loads((index_dir / "model" / "vocabularies.json").read_text())["occupation"][0]
    proc = _cli("recommend", "--index", "moved-run/index", "--occupation", occupation, "-k", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]) == 2
    proc = _cli("recommend", "--index", "moved-run/index", "--occupation", occupation, "--model", str(tmp_path / "nope"),
                cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_cli_new_movie(index_dir, tmp_path):
    genres = json.loads((index_dir / "model" / "vocabularies.json").read_text())["genres"]
    proc = _cli("new-movie", "--index", str(index_dir), "--title", "Space Cats", "--genres", f"{genres[0]}|{genres[1]}",
                "--year", "1998", "-k", "4", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["similar"]) == 4 and len(out["fans"]) == 4
    proc = _cli("new-movie", "--index", str(index_dir), "--title", "Space Cats", "--genres", "Space Opera", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown genre(s) ['Space Opera']" in proc.stderr
    proc = _cli("similar", "--index", str(index_dir), "--movie", "987654", cwd=tmp_path)
    assert proc.returncode == 2 and "recsys new-movie" in proc.stderr and "similar_to_new_movie" not in proc.stderr


def test_who_likes_leaves_out_raters_and_clips_to_the_rating_scale(index_dir, seen, tmp_path):
    from recsys.serving import Recommender

    rec = Recommender.load(index_dir)
    n_users = len(rec.users)
    movie = int(seen.movie_id.value_counts().index[0])            # the most rated movie
    raters = set(seen[seen.movie_id == movie].user_id)
    everyone = rec.users_for_movie(movie, k=n_users, exclude_raters=False)
    assert raters <= {u["user_id"] for u in everyone}
    fans = rec.users_for_movie(movie, k=10)
    assert len(fans) == 10 and not {u["user_id"] for u in fans} & raters
    unrated = [u for u in everyone if u["user_id"] not in raters]
    assert [u["user_id"] for u in fans] == [u["user_id"] for u in unrated[:10]]   # same order, raters dropped
    assert len(rec.users_for_movie(movie, k=n_users)) == n_users - len(raters)

    proc = _cli("who-likes", "--index", str(index_dir), "--movie", str(movie), "-k", str(n_users), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out) == n_users - len(raters) and not {u["user_id"] for u in out} & raters
    lo, hi = rec.info["rating_range"]
    assert all(lo <= u["predicted_rating"] <= hi for u in out)
    assert all(u["predicted_rating"] == pytest.approx(min(max(u["score"], lo), hi), abs=1e-3) for u in out)
    proc = _cli("who-likes", "--index", str(index_dir), "--movie", str(movie), "--include-raters", "-k", "5",
                cwd=tmp_path)
    assert proc.returncode == 0 and "predicted rating" in proc.stdout
    ratings = [float(line.split()[2]) for line in proc.stdout.splitlines()[2:]]
    assert len(ratings) == 5 and all(lo <= r <= hi for r in ratings)


def test_serve_refuses_a_missing_index_in_one_line(tmp_path):
    proc = _cli("serve", "--index", str(tmp_path / "nope"), "--port", str(_free_port()), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --index") and "Traceback" not in proc.stderr
    proc = _cli("serve", "--index", str(tmp_path), "--set", "serve.port=0", cwd=tmp_path)
    assert proc.returncode == 2 and "serve.port" in proc.stderr
