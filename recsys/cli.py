"""The ``recsys`` command line: one subcommand per pipeline stage.

Every command takes ``--config FILE`` and repeatable ``--set key=value`` overrides. A
user mistake (bad config, missing file, bad value) prints one ``error:`` line naming the
file, key or value and exits with status 2; no traceback.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from recsys.errors import RecsysError


def friendly_errors(fn):
    """Turn :class:`RecsysError` into one ``error:`` line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecsysError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default="conf/ml-100k.yaml",
    show_default=True, help="YAML config file (see conf/default.yaml for every key).",
)
def _set_verbose(ctx, param, value):
    from recsys.verbosity import set_verbose

    set_verbose(value)
    return value


verbose_option = click.option(
    "--verbose", is_flag=True, expose_value=False, callback=_set_verbose,
    help="Also print Spark's and TensorFlow's own INFO/WARNING logs (default: progress lines and errors).",
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. --set prepare.shards.train=4 (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recsys")
def main() -> None:
    """Distributed movie recommendations: Spark prepare, Horovod training, FAISS serving."""


# ------------------------------------------------------------------ config


@main.command("config")
@config_option
@set_option
@friendly_errors
def config_cmd(config_path: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (defaults, file, overrides) as YAML."""
    import yaml

    from recsys.config import load_config

    cfg = load_config(config_path, overrides)
    click.echo(f"# {cfg.source}")
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())


# ------------------------------------------------------------------ data


@main.group("data")
def data_group() -> None:
    """Fetch real MovieLens data or generate a synthetic one."""


@data_group.command("fetch")
@click.argument("name", default="ml-100k")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Target directory [default: data/raw/NAME].")
@click.option("--source", type=click.Choice(["auto", "grouplens", "pypi"]), default="auto", show_default=True,
              help="auto: GroupLens when reachable, else the copy in the recbole wheel on PyPI (ml-100k).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for GroupLens.")
@click.option("--force", is_flag=True, help="Fetch again even if verified files are there.")
@friendly_errors
def data_fetch(name: str, dest: str | None, source: str, timeout: float, force: bool) -> None:
    """Download MovieLens dataset NAME (ml-100k, ml-1m, ml-latest-small, ml-25m), sha-checked."""
    from recsys.datasets.fetch import fetch_dataset
    from recsys.datasets.readers import read_movielens

    result = fetch_dataset(name, dest or f"data/raw/{name}", source=source, timeout=timeout, force=force)
    tables = read_movielens(result.dest)
    click.echo(f"{name}: {len(tables.ratings):,} ratings, {len(tables.users):,} users, "
               f"{len(tables.movies):,} movies ({tables.format} format, from {result.source})")
    for fname, digest in sorted(result.files.items()):
        click.echo(f"  {result.dest / fname}  sha256 {digest[:16]}...")


SYNTH_DEFAULT_DEST = "data/raw/synth"  # synthetic files never go beside a real dataset's


@data_group.command("synth")
@config_option
@set_option
@click.option("--ratings", type=int, default=None, help="Number of ratings [config synth.ratings].")
@click.option("--users", type=int, default=None, help="Number of users [config synth.users].")
@click.option("--movies", type=int, default=None, help="Number of movies [config synth.movies].")
@click.option("--format", "fmt", type=click.Choice(["ml-1m", "ml-latest"]), default=None,
              help="File format [config synth.format].")
@click.option("--seed", type=int, default=None, help="Random seed [config synth.seed].")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help=f"Target directory [config paths.raw; {SYNTH_DEFAULT_DEST} when paths.raw is a real dataset's].")
@friendly_errors
def data_synth(config_path, overrides, ratings, users, movies, fmt, seed, dest) -> None:
    """Generate a synthetic MovieLens dataset with learnable structure, in bounded memory."""
    from recsys.config import load_config
    from recsys.datasets.synth import generate

    cfg = load_config(config_path, overrides).synth
    ratings = cfg.ratings if ratings is None else ratings
    users = cfg.users if users is None else users
    movies = cfg.movies if movies is None else movies
    for name, value in (("--ratings", ratings), ("--users", users), ("--movies", movies)):
        if value < 1:
            raise click.BadParameter(f"must be at least 1, got {value}", param_hint=name)
    if dest is None:  # paths.raw, unless it is where a real dataset (data.dataset) is fetched to
        full = load_config(config_path, overrides)
        from recsys.datasets.fetch import GROUPLENS_DATASETS

        dest = SYNTH_DEFAULT_DEST if full.data.dataset in GROUPLENS_DATASETS else full.paths.raw
    try:
        summary = generate(dest, ratings, users, movies, fmt or cfg.format, cfg.seed if seed is None else seed,
                           cfg.factors, cfg.noise, cfg.chunk_ratings)
    except ValueError as err:
        raise RecsysError(str(err)) from None
    click.echo(f"wrote {summary.ratings:,} ratings, {summary.users:,} users, {summary.movies:,} movies "
               f"({summary.format}) to {summary.dest} in {summary.seconds:.1f}s "
               f"({summary.ratings / max(summary.seconds, 1e-9):,.0f} ratings/s)")


@data_group.command("inspect")
@click.argument("directory", type=click.Path())
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "ml-100k", "ml-1m", "ml-latest", "recbole"]))
@click.option("--json", "as_json", is_flag=True, help="Print the accounting as JSON.")
@friendly_errors
def data_inspect(directory: str, fmt: str, as_json: bool) -> None:
    """Read raw MovieLens files and report rows read, kept and rejected per file."""
    from recsys.datasets.readers import read_movielens

    tables = read_movielens(directory, fmt)
    report = {"format": tables.format, "tables": tables.accounting()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"format: {tables.format}")
    for table, acc in report["tables"].items():
        rejected = ", ".join(f"{k}={v}" for k, v in acc["rejected"].items()) or "none"
        click.echo(f"  {table:8s} {acc['file']}: read {acc['rows_read']:,}, kept {acc['rows_kept']:,}, rejected: {rejected}")


# ------------------------------------------------------------------ prepare


@main.command("prepare", context_settings={"ignore_unknown_options": True})
@config_option
@set_option
@click.option("--master", default=None, help="Spark master for spark-submit (default: the config's prepare.master).")
@verbose_option
@friendly_errors
def prepare_cmd(config_path, overrides, master):
    """Run the Spark prepare job through spark-submit (same as spark-submit jobs/prepare.py)."""
    import os
    import subprocess
    from pathlib import Path

    from recsys.config import load_config

    load_config(config_path, overrides)  # fail fast, before starting a JVM
    bin_dir = Path(sys.executable).parent
    submit = bin_dir / "spark-submit"
    job = Path(__file__).resolve().parents[1] / "jobs" / "prepare.py"
    cmd = [str(submit if submit.exists() else "spark-submit")]
    if master:
        cmd += ["--master", master]
    from recsys.verbosity import spark_java_options

    if spark_java_options():
        cmd += ["--driver-java-options", spark_java_options()]
    cmd += [str(job), "--config", config_path] + [a for o in overrides for a in ("--set", o)]
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
    sys.exit(subprocess.call(cmd, env=env))


# ------------------------------------------------------------------ evaluate


@main.command("evaluate")
@config_option
@set_option
@click.option("--fast", is_flag=True, help="Skip the slow baselines (Surprise SVD++, Spark MLlib ALS explicit and implicit).")
@click.option("--compare", "compare", multiple=True, metavar="LABEL=DIR",
              help="Also evaluate another trained model on the same split (repeatable): DIR is its serving "
                   "directory, or its model directory (exported and indexed with this config's index settings "
                   "first), e.g. --compare 'BPR-MF=runs/ml-100k/model-bpr'.")
@verbose_option
@friendly_errors
def evaluate_cmd(config_path, overrides, fast, compare):
    """Evaluate the served model (paths.index) and the baselines on the prepared test sets; write the report."""
    import tempfile
    from pathlib import Path

    from recsys.config import load_config
    from recsys.errors import ConfigError
    from recsys.evaluation import evaluate, served_directory

    cfg = load_config(config_path, overrides)
    with tempfile.TemporaryDirectory(prefix="recsys-evaluate-") as work:
        served = {None: served_directory(cfg.paths.index, cfg, Path(work) / "main")}
        for i, item in enumerate(compare):
            label, sep, directory = item.partition("=")
            if not sep or not label or not directory:
                raise ConfigError(f"--compare {item!r}: expected LABEL=DIR")
            served[label] = served_directory(directory, cfg, Path(work) / f"compare-{i}")
        evaluate(cfg.paths.prepared, served, cfg.paths.report, include_slow=not fast, settings=cfg.evaluate)
    click.echo((Path(cfg.paths.report) / "report.md").read_text())
    click.echo(f"metrics: {Path(cfg.paths.report) / 'metrics.json'}; plots in {cfg.paths.report}")


# ------------------------------------------------------------------ serving


def _recommender(config_path, overrides, index_dir, model_dir=None):
    """The Recommender of ``--index DIR`` (no config read then: it runs from any folder), else of the
    config's ``paths.index``. Cold start uses ``--model``, else the model artifact inside the index."""
    from pathlib import Path

    from recsys.serving import INDEX_JSON, Recommender
    from recsys.service import resolve_model_dir

    if index_dir is None:
        from recsys.config import load_config

        index_dir = load_config(config_path, overrides).paths.index
    info_path = Path(index_dir) / INDEX_JSON
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except ValueError:
        info = {}  # Recommender.load names the damage
    return Recommender.load(index_dir, model_dir=resolve_model_dir(Path(index_dir), info, model_dir))


def _clip(rec, value: float) -> float:
    """A predicted rating on the index's rating scale (the model's raw output may fall outside it)."""
    lo, hi = (rec.info.get("rating_range") if rec.rates else None) or (float("-inf"), float("inf"))
    return min(max(value, lo), hi)


def _print_rows(rows: list[dict], title: str, as_json: bool, rec=None, similarity: bool = False) -> None:
    """Rows in the library's order (the ranking score's), the predicted rating (clipped to the rating
    scale) in its own column, or the cosine for similarity lists. JSON adds ``rank`` and
    ``predicted_rating``; ``score`` stays the library's unclipped value."""
    if not similarity and rec is not None:
        rows = [{"rank": i, **r, "predicted_rating": round(_clip(rec, r["score"]), 4)} for i, r in enumerate(rows, 1)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo(title)
    if not rows:
        click.echo("  (nothing)")
        return
    label = "similarity" if similarity else ("predicted rating" if rec is None or rec.rates else "score")
    value = (lambda r: f"{r['score']:{len(label)}.3f}") if similarity else \
        (lambda r: f"{r['predicted_rating']:{len(label)}.2f}")
    if "movie_id" in rows[0]:
        click.echo(f"  {'#':>2}  {'movie':>6}  {label}  title [genres]")
        for i, r in enumerate(rows, 1):
            click.echo(f"  {i:>2}  {r['movie_id']:>6}  {value(r)}  {r['title']} [{r['genres']}]")
    else:
        click.echo(f"  {'#':>2}  {'user':>6}  {label}  gender age occupation")
        for i, r in enumerate(rows, 1):
            click.echo(f"  {i:>2}  {r['user_id']:>6}  {value(r)}  {r['gender'] or '-':6} {r['age'] or '-':>3} "
                       f"{r['occupation'] or '-'}")


def _ranked(rec, what: str) -> str:
    return f"{what} (in the {rec.info.get('label', 'model')}'s ranking order):"


index_option = click.option("--index", "index_dir", default=None,
                            help="Serving directory (alone: no config needed) [config paths.index].")
model_option = click.option("--model", "model_dir", default=None,
                            help="Trained model for new users/movies [the one recorded in the index, else "
                                 "model/ beside it].")
k_option = click.option("-k", "k", type=int, default=10, show_default=True, help="How many results.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _value_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            raise RecsysError(str(err)) from None

    return wrapper


@main.command("recommend")
@config_option
@set_option
@index_option
@model_option
@click.option("--user", "user_id", type=int, default=None, help="A known user id.")
@click.option("--gender", default=None, help="New user: gender (M/F).")
@click.option("--age", type=int, default=None, help="New user: age in years.")
@click.option("--occupation", default=None, help="New user: occupation (e.g. writer).")
@click.option("--include-seen", is_flag=True, help="Do not exclude movies the user rated in training.")
@k_option
@json_option
@friendly_errors
@_value_errors
def recommend_cmd(config_path, overrides, index_dir, model_dir, user_id, gender, age, occupation, include_seen, k,
                  as_json):
    """Top movies for a known user (--user) or a new one (--gender/--age/--occupation)."""
    rec = _recommender(config_path, overrides, index_dir, model_dir)
    if user_id is not None:
        rows = _cli_ids(rec.recommend, user_id, k=k, exclude_seen=not include_seen)
        _print_rows(rows, _ranked(rec, f"top {k} for user {user_id}"), as_json, rec)
    elif gender or age or occupation:
        rows = rec.recommend_for_profile(gender=gender, age=age, occupation=occupation, k=k)
        _print_rows(rows, _ranked(rec, f"top {k} for a new user (gender={gender}, age={age}, "
                                       f"occupation={occupation})"), as_json, rec)
    else:
        raise RecsysError("give --user ID, or a profile with --gender/--age/--occupation")


def _cli_ids(fn, *args, **kwargs):
    """The library call, with an unknown id's hint in CLI terms (not Python method names)."""
    from recsys.serving import UnknownIdError

    try:
        return fn(*args, **kwargs)
    except UnknownIdError as err:
        text = str(err).split(" (use ")[0]
        hint = ("recsys recommend --gender/--age/--occupation" if text.startswith("unknown user")
                else "recsys new-movie --title ... --genres ...")
        raise RecsysError(f"{text} (use {hint} for a new one)") from None


def _movie_query(fn):
    """The options and error handling shared by the commands that take one known movie."""
    for decorate in reversed((config_option, set_option, index_option, model_option,
                              click.option("--movie", "movie_id", type=int, required=True, help="A known movie id."),
                              k_option, json_option, friendly_errors, _value_errors)):
        fn = decorate(fn)
    return fn


@main.command("similar")
@_movie_query
def similar_cmd(config_path, overrides, index_dir, model_dir, movie_id, k, as_json):
    """Movies most similar to a movie (cosine of the movie vectors)."""
    rec = _recommender(config_path, overrides, index_dir, model_dir)
    rows = _cli_ids(rec.similar_movies, movie_id, k=k)
    title = rec.movies.loc[rec.movies["movie_id"] == movie_id, "title"].iloc[0]
    _print_rows(rows, f"{k} movies most similar to {movie_id} ({title}):", as_json, similarity=True)


@main.command("who-likes")
@_movie_query
@click.option("--include-raters", is_flag=True, help="Keep the users who already rated the movie in training.")
def who_likes_cmd(config_path, overrides, index_dir, model_dir, movie_id, k, as_json, include_raters):
    """Users predicted to rate a movie highest (users who already rated it are left out)."""
    rec = _recommender(config_path, overrides, index_dir, model_dir)
    rows = _cli_ids(rec.users_for_movie, movie_id, k=k, exclude_raters=not include_raters)
    who = "users" if include_raters else "users who have not rated it"
    _print_rows(rows, f"{k} {who} most likely to love movie {movie_id}:", as_json, rec)


@main.command("new-movie")
@config_option
@set_option
@index_option
@model_option
@click.option("--title", required=True, help="The new movie's title.")
@click.option("--genres", default="", help="Genres separated by | or , (e.g. 'Comedy|Sci-Fi').")
@click.option("--year", type=int, default=None, help="Release year.")
@k_option
@json_option
@friendly_errors
@_value_errors
def new_movie_cmd(config_path, overrides, index_dir, model_dir, title, genres, year, k, as_json):
    """A movie the model has never seen: the closest known movies and the users most likely to love it."""
    rec = _recommender(config_path, overrides, index_dir, model_dir)
    genre_list = [g.strip() for g in genres.replace(",", "|").split("|") if g.strip()]
    similar = rec.similar_to_new_movie(title=title, genres=genre_list, year=year, k=k)
    fans = rec.users_for_new_movie(title=title, genres=genre_list, year=year, k=k)
    if as_json:
        fans = [{"rank": i, **r, "predicted_rating": round(_clip(rec, r["score"]), 4)} for i, r in enumerate(fans, 1)]
        click.echo(json.dumps({"similar": similar, "fans": fans}, indent=2, ensure_ascii=False))
        return
    _print_rows(similar, f"{k} known movies closest to {title!r}:", False, similarity=True)
    _print_rows(fans, f"{k} users most likely to love {title!r}:", False, rec)


@main.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config for the serve.* knobs and paths.index [defaults: conf/default.yaml's values].")
@set_option
@index_option
@model_option
@click.option("--host", default=None, help="Address to listen on [config serve.host: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [config serve.port: 8000].")
@click.option("--workers", type=int, default=None, help="Worker processes [config serve.workers: 1].")
@click.option("--wait-for-index", is_flag=True,
              help="Start even when the index does not exist yet (/readyz says 503 until it does).")
@friendly_errors
def serve_cmd(config_path, overrides, index_dir, model_dir, host, port, workers, wait_for_index):
    """HTTP API, web page and metrics over an index directory (see recsys/service.py)."""
    from pathlib import Path

    from recsys.config import load_config
    from recsys.errors import ConfigError

    cfg = load_config(config_path, [*overrides, *(f"serve.{k}={v}" for k, v in
                                                 (("host", host), ("port", port), ("workers", workers))
                                                 if v is not None)])
    index_dir = index_dir or cfg.paths.index
    if not wait_for_index:
        if not (Path(index_dir) / "index.json").is_file():
            raise ConfigError(f"--index {index_dir}: no index.json there (build one with python jobs/build_index.py "
                              "--config ..., or pass --wait-for-index)")
        _recommender(None, (), index_dir, model_dir)   # verify checksums now: a broken index fails here, in one line
    from recsys.service import ServeSettings, serve

    serve(ServeSettings(str(index_dir), model_dir, cfg.serve.max_k, cfg.serve.reload_interval_s),
          cfg.serve.host, cfg.serve.port, cfg.serve.workers)


if __name__ == "__main__":  # pragma: no cover
    main()
