"""``recsys serve``: an HTTP JSON API and a web page over :class:`recsys.serving.Recommender`.

Built on FastAPI (OpenAPI docs at ``/docs``), served by uvicorn, with Prometheus metrics
(``/metrics``: request counts by route, method and status; latency histograms by route).

Routes (ids are integers; ``k`` is from 1 to ``serve.max_k``)::

    GET  /api/catalog                                   vocabularies for the forms, counts, rating scale
    GET  /api/users?offset=&limit=  /api/movies?q=&limit=   browse ids (titles matched case-blind)
    GET  /api/users/{id}                                profile and the movies rated in training
    GET  /api/users/{id}/recommendations?k=&include_seen=
    GET  /api/users/{id}/predictions/{movie_id}         the predicted rating of one pair
    GET  /api/movies/{id}                               title, genres, year
    GET  /api/movies/{id}/similar?k=                    cosine of the movie vectors
    GET  /api/movies/{id}/fans?k=&include_raters=       users predicted to rate it highest
    GET  /api/movies/{id}/also-liked?k=
    POST /api/new-user/recommendations   {gender, age, occupation, zipcode, k}
    POST /api/new-movie/similar          {title, genres, year, k}
    POST /api/new-movie/fans             {title, genres, year, k}
    POST /admin/index                    {"index": DIR}   (loopback clients only) serve another index
    GET  /healthz  /readyz  /metrics  /docs  /        (/: the web page)

Errors are JSON ``{"detail": message}``: 400 for a malformed request (the library's own
message for a bad value), 404 for an unknown id, 503 while no index is loaded or when cold
start has no model; never a 500 for a user mistake.

Movie lists are in the index's ranking order (``rank`` 1 first). ``predicted_rating`` is the
model's rating prediction clipped to the rating scale; ``raw_prediction`` is the unclipped
``score_offset + <user score, movie score>`` (it may fall outside the scale). For a model that
does not predict ratings (BPR-MF, NeuMF) both are its score, unclipped (NeuMF's: its pair score,
the lists re-ranked by it). Similar-movie lists give the
``similarity`` (cosine) instead.

Hot swap: every worker holds one loaded index; a new one (a rebuilt index directory, a new
symlink target, or the directory named by ``POST /admin/index``) is loaded and verified
aside, its cold-start model warmed, and only then put in place by one reference assignment.
A request reads the reference once, so it is answered wholly by the old or wholly by the new
index, and none fails during a swap. With several workers the target directory is kept in a
small state file that every worker's watcher follows.
"""


import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("recsys.service")
WEB_DIR = Path(__file__).with_name("web")
SETTINGS_ENV = "RECSYS_SERVE_SETTINGS"   # JSON settings handed to uvicorn's worker processes


@dataclass(frozen=True)
class ServeSettings:
    """What one ``recsys serve`` process needs (JSON-safe: passed to worker processes)."""

    index_dir: str
    model_dir: str | None = None
    max_k: int = 100
    reload_interval_s: float = 5.0
    state_file: str | None = None   # holds the index directory chosen by POST /admin/index

    def to_env(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_env(cls) -> "ServeSettings":
        return cls(**json.loads(os.environ[SETTINGS_ENV]))


def _say(msg: str) -> None:
    print(f"[serve] {msg}", file=sys.stderr, flush=True)


def resolve_model_dir(index_dir: Path, info: dict, explicit: str | None) -> Path | None:
    """The trained model for cold start: ``explicit``, else the model artifact inside the index
    directory (``index.json``'s ``model``: it travels with the index); None when neither exists."""
    if explicit:
        return Path(explicit)
    inside = index_dir / info.get("model", "model")
    return inside if (inside / "model.json").is_file() else None


def index_version(index_dir: Path) -> str | None:
    """The self-checksum of ``index_dir/index.json`` (changes with every build), or None."""
    try:
        return json.loads((index_dir / "index.json").read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Served:
    """One loaded index: what a request reads, in one piece."""

    rec: object            # recsys.serving.Recommender
    directory: Path        # as resolved (a symlink's target)
    requested: Path        # as named by the operator
    version: str           # index.json sha256
    model_dir: Path | None
    rating_range: tuple[float, float] | None
    seen: dict             # user_id -> movie ids rated in training (seen.parquet)
    vocab: dict            # gender / occupation / genres values (vocabularies.json)
    movie_rows: dict       # movie_id -> row of rec.movies
    user_rows: dict        # user_id -> row of rec.users
    loaded_at: float


def load_served(index_dir: str | Path, model_dir: str | None = None, warm: bool = True) -> Served:
    """Load and verify one index directory (checksums, counts) and, when a model is found and
    ``warm``, load its towers now so that no request pays for it."""
    import pandas as pd

    from recsys.serving import Recommender

    requested = Path(index_dir)
    directory = requested.resolve()
    info = json.loads((directory / "index.json").read_text()) if (directory / "index.json").is_file() else {}
    md = resolve_model_dir(directory, info, model_dir)
    rec = Recommender.load(directory, model_dir=md)
    if md is not None and warm:
        try:
            rec.profile_vector()  # loads the towers and the encoder (cold start)
        except Exception as err:  # noqa: BLE001 - cold start stays unavailable, the index still serves
            _say(f"cold start unavailable for {directory}: {err}")
    seen_df = pd.read_parquet(directory / "seen.parquet")
    seen = {int(u): g.to_numpy() for u, g in seen_df.groupby("user_id")["movie_id"]}
    vocab_path = (md or directory / info.get("model", "model")) / "vocabularies.json"
    vocabs = json.loads(vocab_path.read_text()) if vocab_path.is_file() else {}
    vocab = {name: list(vocabs.get(name, [])) for name in ("gender", "occupation", "genres")}
    # a model that does not predict ratings (BPR-MF): its score is shown as it is, never clipped
    rr = rec.info.get("rating_range") if rec.rates else None
    movie_rows = {int(v): i for i, v in enumerate(rec.movies["movie_id"])}
    user_rows = {int(v): i for i, v in enumerate(rec.users["user_id"])}
    return Served(rec, directory, requested, rec.info["sha256"], md, tuple(rr) if rr else None, seen, vocab,
                  movie_rows, user_rows, time.time())


class IndexHolder:
    """The index being served, swapped atomically (see module docstring).

    ``current`` is read once per request; ``swap`` and the watcher replace it only with a fully
    loaded index. A failed load keeps the old index and is reported (``last_error``).
    """

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.current: Served | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self) -> Path:
        """The directory to serve: the state file's (POST /admin/index), else --index."""
        sf = self.settings.state_file
        if sf and os.path.isfile(sf):
            text = Path(sf).read_text().strip()
            if text:
                return Path(text)
        return Path(self.settings.index_dir)

    def swap(self, directory: str | Path) -> Served:
        """Load ``directory`` aside and put it in place; raises (keeping the old index) on failure."""
        with self._swap_lock:
            served = load_served(directory, self.settings.model_dir)
            old, self.current = self.current, served   # the atomic step: one reference
            self.last_error = None
            if old is not None:
                self.swaps += 1
                _say(f"swapped {old.directory} ({old.version[:12]}) -> {served.directory} ({served.version[:12]})")
            else:
                _say(f"serving {served.directory} ({served.version[:12]}, {len(served.rec.users):,} users, "
                     f"{len(served.rec.movies):,} movies)")
            return served

    def point_to(self, directory: str | Path) -> Served:
        """Serve ``directory`` from now on, in every worker (POST /admin/index)."""
        served = self.swap(directory)
        sf = self.settings.state_file
        if sf:
            tmp = f"{sf}.tmp-{os.getpid()}"
            Path(tmp).write_text(str(Path(directory).resolve()))
            os.replace(tmp, sf)   # the other workers' watchers follow it
        return served

    def check(self) -> bool:
        """Swap in the target directory when it differs from the loaded one; True when swapped."""
        target = self.target()
        cur = self.current
        resolved = target.resolve()
        version = index_version(resolved)
        if version is None:
            if cur is None:
                self.last_error = f"{target}/index.json not found (waiting for python jobs/build_index.py)"
            return False
        if cur is not None and cur.directory == resolved and cur.version == version:
            return False
        try:
            self.swap(target)
            return True
        except Exception as err:  # noqa: BLE001 - keep serving the old index, report why
            self.last_error = f"{target}: {err}"
            _say(f"not swapping in {target}: {err}")
            return False

    def start(self) -> None:
        """First load and the watcher thread (in the background: /readyz says when it is ready)."""
        def run():
            self.check()
            while not self._stop.wait(self.settings.reload_interval_s or 1.0):
                if self.settings.reload_interval_s > 0 or self.current is None:
                    self.check()

        self._thread = threading.Thread(target=run, name="recsys-index-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------- metrics


def _metrics():
    """Process-wide Prometheus metrics (created once: a registry refuses duplicates)."""
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Gauge, Histogram

        _METRICS = {
            "requests": Counter("recsys_http_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"]),
            "latency": Histogram("recsys_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"],
                                 buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)),
            "swaps": Counter("recsys_index_swaps_total", "Index swaps done by the watcher or POST /admin/index"),
            "ready": Gauge("recsys_index_loaded", "1 when an index is loaded", multiprocess_mode="max"),
        }
    return _METRICS


_METRICS = None


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request under its route template."""

    def __init__(self, app):
        self.app = app
        self.m = _metrics()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "<unmatched>"
            self.m["requests"].labels(name, scope["method"], str(status[0])).inc()
            self.m["latency"].labels(name, scope["method"]).observe(time.perf_counter() - start)


# ---------------------------------------------------------------------------- the app


def create_app(settings: ServeSettings, holder: IndexHolder | None = None):
    """The FastAPI application; ``holder`` (default: a new one, started with the app) serves the index."""
    from contextlib import asynccontextmanager

    from fastapi import Body, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from recsys.errors import RecsysError
    from recsys.serving import UnknownIdError

    holder = holder or IndexHolder(settings)
    metrics = _metrics()

    @asynccontextmanager
    async def lifespan(app):
        if holder.current is None and holder._thread is None:
            holder.start()
        yield
        holder.stop()

    app = FastAPI(title="recsys", version="0.1.0", lifespan=lifespan,
                  description="Movie recommendations from a FAISS index built by the recsys pipeline. "
                              "Movie lists come in the model's ranking order; `predicted_rating` is the model's "
                              "rating clipped to the rating scale, `raw_prediction` the unclipped value.")
    app.state.holder = holder

    class ApiError(Exception):
        def __init__(self, status: int, message: str):
            self.status, self.message = status, message

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        # one line naming the field: "path user_id: Input should be a valid integer, ... (got 'abc')"
        parts = []
        for e in err.errors():
            where = " ".join(str(x) for x in e.get("loc", ()))
            got = f" (got {e['input']!r})" if "input" in e and e.get("type") != "json_invalid" \
                and not isinstance(e["input"], dict) else ""
            parts.append(f"{where}: {e.get('msg', 'invalid')}{got}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        return JSONResponse({"detail": str(err.detail)}, status_code=err.status_code)

    def served() -> Served:
        cur = holder.current
        if cur is None:
            raise ApiError(503, f"no index loaded yet: {holder.last_error or 'loading'}")
        return cur

    def check_k(k: int) -> int:
        if not 1 <= k <= settings.max_k:
            raise ApiError(400, f"k must be an integer from 1 to {settings.max_k}, got {k}")
        return k

    def call(fn, *args, **kwargs):
        """The library call, its user mistakes mapped to HTTP statuses with its own message."""
        try:
            return fn(*args, **kwargs)
        except UnknownIdError as err:
            text = str(err).split(" (use ")[0]
            hint = ("POST /api/new-user/recommendations" if "user" in text.split(" id ")[0]
                    else "POST /api/new-movie/similar")
            raise ApiError(404, f"{text} (use {hint} for a new one)") from None
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        except RecsysError as err:   # e.g. cold start without its model
            raise ApiError(503, str(err)) from None

    def rating(s: Served, raw: float) -> float:
        lo, hi = s.rating_range or (float("-inf"), float("inf"))
        return round(min(max(raw, lo), hi), 4)

    def movies_out(s: Served, rows: list[dict], similarity: bool = False) -> list[dict]:
        out = []
        for i, r in enumerate(rows, 1):
            item = {"rank": i, "movie_id": r["movie_id"], "title": r["title"],
                    "genres": [g for g in (r["genres"] or "").split("|") if g]}
            if similarity:
                item["similarity"] = round(r["score"], 4)
            else:
                item["predicted_rating"] = rating(s, r["score"])
                item["raw_prediction"] = round(r["score"], 4)
            out.append(item)
        return out

    def text(v):   # a missing demographic (NaN in the table) is null in JSON
        return v if isinstance(v, str) else None

    def users_out(s: Served, rows: list[dict]) -> list[dict]:
        return [{"rank": i, "user_id": r["user_id"], "gender": text(r["gender"]), "age": r["age"],
                 "occupation": text(r["occupation"]), "predicted_rating": rating(s, r["score"]),
                 "raw_prediction": round(r["score"], 4)} for i, r in enumerate(rows, 1)]

    def movie_info(s: Served, movie_id: int) -> dict:
        m = s.rec.movies
        row = s.movie_rows.get(movie_id)
        if row is None:
            raise ApiError(404, f"unknown movie id {movie_id}: not among the {len(m):,} movies of this model "
                                "(use POST /api/new-movie/similar for a new one)")
        year = m.at[row, "year"] if "year" in m else None
        return {"movie_id": movie_id, "title": m.at[row, "title"],
                "genres": [g for g in (m.at[row, "genres"] or "").split("|") if g],
                "year": None if year is None or year != year else int(year)}

    def user_info(s: Served, user_id: int) -> dict:
        u = s.rec.users
        row = s.user_rows.get(user_id)
        if row is None:
            raise ApiError(404, f"unknown user id {user_id}: not among the {len(u):,} users of this model "
                                "(use POST /api/new-user/recommendations for a new one)")
        age = u.at[row, "age"]
        return {"user_id": user_id, "gender": text(u.at[row, "gender"]), "age": None if age != age else int(age),
                "occupation": text(u.at[row, "occupation"])}

    # ------------------------------------------------------------------ probes and metrics

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: an index is loaded")
    async def readyz():
        cur = holder.current
        if cur is None:
            return JSONResponse({"status": "loading", "detail": holder.last_error}, status_code=503)
        return {"status": "ready", "index": str(cur.directory), "index_version": cur.version,
                "model_version": cur.rec.info.get("model_version"), "cold_start": cur.model_dir is not None,
                "users": len(cur.rec.users), "movies": len(cur.rec.movies), "swaps": holder.swaps,
                "last_error": holder.last_error}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        metrics["ready"].set(1 if holder.current is not None else 0)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    class IndexChoice(BaseModel):
        model_config = ConfigDict(extra="forbid")
        index: str = Field(description="An index directory written by python jobs/build_index.py")

    @app.post("/admin/index", tags=["operations"],
              summary="Serve another index directory (atomic swap; loopback clients only)")
    def admin_index(request: Request, choice: IndexChoice):
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1", "localhost"):
            raise ApiError(403, "POST /admin/index is accepted from the pod or machine itself only (loopback)")
        if not (Path(choice.index) / "index.json").is_file():
            raise ApiError(400, f"index: {choice.index}/index.json not found")
        try:
            cur = holder.point_to(choice.index)
        except RecsysError as err:
            raise ApiError(400, f"index: {err}") from None
        metrics["swaps"].inc()
        return {"status": "swapped", "index": str(cur.directory), "index_version": cur.version}

    # ------------------------------------------------------------------ browsing

    @app.get("/api/catalog", tags=["browse"], summary="Vocabularies for the forms, counts, limits")
    async def catalog():
        s = served()
        return {"users": len(s.rec.users), "movies": len(s.rec.movies), "genders": s.vocab["gender"],
                "occupations": s.vocab["occupation"], "genres": s.vocab["genres"],
                "rating_range": s.rating_range, "max_k": settings.max_k, "model": s.rec.info.get("label"), "rates": s.rec.rates,
                "cold_start": s.model_dir is not None}

    @app.get("/api/users", tags=["browse"], summary="User ids, a page at a time")
    async def list_users(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)):
        ids = served().rec.users["user_id"].to_numpy()
        return {"total": len(ids), "offset": offset, "user_ids": [int(x) for x in ids[offset:offset + limit]]}

    @app.get("/api/movies", tags=["browse"], summary="Movies whose title contains q (case-blind)")
    async def list_movies(q: str = "", limit: int = Query(20, ge=1, le=1000)):
        m = served().rec.movies
        hits = m[m["title"].str.contains(q, case=False, regex=False, na=False)] if q else m
        return {"total": len(hits), "movies": [
            {"movie_id": int(r.movie_id), "title": r.title, "genres": [g for g in (r.genres or "").split("|") if g]}
            for r in hits.head(limit).itertuples()]}

    @app.get("/api/users/{user_id}", tags=["known users"], summary="A user's profile and training ratings")
    async def get_user(user_id: int, limit: int = Query(50, ge=1, le=1000)):
        s = served()
        info = user_info(s, user_id)
        rated = s.seen.get(user_id, [])
        rows = []
        for movie_id in rated:
            movie = movie_info(s, int(movie_id))
            raw = s.rec.predict(user_id, int(movie_id))
            rows.append({**movie, "predicted_rating": rating(s, raw), "raw_prediction": round(raw, 4)})
        rows.sort(key=lambda r: -r["raw_prediction"])
        return {**info, "rated_count": len(rated), "rated": rows[:limit]}

    @app.get("/api/users/{user_id}/recommendations", tags=["known users"],
             summary="Top k movies for a known user (movies rated in training left out)")
    async def recommend(user_id: int, k: int = 10, include_seen: bool = False):
        s = served()
        rows = call(s.rec.recommend, user_id, k=check_k(k), exclude_seen=not include_seen)
        return JSONResponse({"user_id": user_id, "k": k, "model": s.rec.info.get("label"),
                             "items": movies_out(s, rows)})

    @app.get("/api/users/{user_id}/predictions/{movie_id}", tags=["known users"],
             summary="The predicted rating of one user for one movie")
    async def predict(user_id: int, movie_id: int):
        s = served()
        raw = call(s.rec.predict, user_id, movie_id)
        return {"user_id": user_id, "movie_id": movie_id, "predicted_rating": rating(s, raw),
                "raw_prediction": round(raw, 4), "rating_range": s.rating_range}

    @app.get("/api/movies/{movie_id}", tags=["known movies"], summary="A movie's title, genres and year")
    async def get_movie(movie_id: int):
        return movie_info(served(), movie_id)

    @app.get("/api/movies/{movie_id}/similar", tags=["known movies"],
             summary="Movies closest to this one (cosine of the movie vectors)")
    async def similar(movie_id: int, k: int = 10):
        s = served()
        rows = call(s.rec.similar_movies, movie_id, k=check_k(k))
        return JSONResponse({"movie_id": movie_id, "k": k, "items": movies_out(s, rows, similarity=True)})

    @app.get("/api/movies/{movie_id}/fans", tags=["known movies"],
             summary="Users predicted to rate this movie highest (who would like it)")
    async def fans(movie_id: int, k: int = 10, include_raters: bool = False):
        s = served()
        rows = call(s.rec.users_for_movie, movie_id, k=check_k(k), exclude_raters=not include_raters)
        return JSONResponse({"movie_id": movie_id, "k": k, "items": users_out(s, rows)})

    @app.get("/api/movies/{movie_id}/also-liked", tags=["known movies"],
             summary="People who like this movie also like")
    async def also_liked(movie_id: int, k: int = 10):
        s = served()
        rows = call(s.rec.also_liked, movie_id, k=check_k(k))
        return JSONResponse({"movie_id": movie_id, "k": k, "items": movies_out(s, rows)})

    # ------------------------------------------------------------------ cold start

    class NewUser(BaseModel):
        model_config = ConfigDict(extra="forbid")
        gender: str | None = Field(None, description="One of /api/catalog genders")
        age: int | None = Field(None, description="Years")
        occupation: str | None = Field(None, description="One of /api/catalog occupations")
        zipcode: str | None = None
        k: int = 10

    class NewMovie(BaseModel):
        model_config = ConfigDict(extra="forbid")
        title: str
        genres: list[str] = Field(default_factory=list, description="Values of /api/catalog genres")
        year: int | None = None
        k: int = 10

    @app.post("/api/new-user/recommendations", tags=["cold start"],
              summary="Top k movies for a new user described by gender, age and occupation")
    def new_user(body: NewUser = Body(...)):
        s = served()
        rows = call(s.rec.recommend_for_profile, gender=body.gender, age=body.age, occupation=body.occupation,
                    zipcode=body.zipcode, k=check_k(body.k))
        return {"profile": body.model_dump(exclude={"k"}), "k": body.k, "items": movies_out(s, rows)}

    @app.post("/api/new-movie/similar", tags=["cold start"],
              summary="Known movies closest to a new movie given by title, genres and year")
    def new_movie_similar(body: NewMovie = Body(...)):
        s = served()
        rows = call(s.rec.similar_to_new_movie, title=body.title, genres=body.genres, year=body.year,
                    k=check_k(body.k))
        return {"movie": body.model_dump(exclude={"k"}), "k": body.k, "items": movies_out(s, rows, similarity=True)}

    @app.post("/api/new-movie/fans", tags=["cold start"], summary="Users predicted to rate a new movie highest")
    def new_movie_fans(body: NewMovie = Body(...)):
        s = served()
        rows = call(s.rec.users_for_new_movie, title=body.title, genres=body.genres, year=body.year,
                    k=check_k(body.k))
        return {"movie": body.model_dump(exclude={"k"}), "k": body.k, "items": users_out(s, rows)}

    # ------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.add_middleware(MetricsMiddleware)
    return app


def app_from_env():
    """uvicorn's factory in each worker process (settings from ``RECSYS_SERVE_SETTINGS``)."""
    return create_app(ServeSettings.from_env())


def serve(settings: ServeSettings, host: str, port: int, workers: int) -> None:
    """Run uvicorn with ``workers`` processes (blocks until stopped)."""
    import tempfile

    import uvicorn

    state_dir = tempfile.mkdtemp(prefix="recsys-serve-")
    settings = ServeSettings(**{**settings.__dict__, "state_file": os.path.join(state_dir, "index-target")})
    os.environ[SETTINGS_ENV] = settings.to_env()
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = os.path.join(state_dir, "metrics")
        os.mkdir(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir   # every worker's counters, summed on /metrics
    _say(f"http://{host}:{port}/ (page), /docs (API), /metrics; index {settings.index_dir}; {workers} worker(s)")
    try:
        uvicorn.run("recsys.service:app_from_env", factory=True, host=host, port=port, workers=workers,
                    access_log=False, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)
