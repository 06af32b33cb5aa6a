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


def _recommender(config_path, overrides, index_dir):
    from recsys.config import load_config
    from recsys.serving import Recommender

    cfg = load_config(config_path, overrides)
    return Recommender.load(index_dir or cfg.paths.index)


def _print_rows(rows: list[dict], title: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo(title)
    if not rows:
        click.echo("  (nothing)")
        return
    if "movie_id" in rows[0]:
        click.echo(f"  {'#':>2}  {'movie':>6}  {'score':>6}  title [genres]")
        for i, r in enumerate(rows, 1):
            click.echo(f"  {i:>2}  {r['movie_id']:>6}  {r['score']:6.3f}  {r['title']} [{r['genres']}]")
    else:
        click.echo(f"  {'#':>2}  {'user':>6}  {'score':>6}  gender age occupation")
        for i, r in enumerate(rows, 1):
            click.echo(f"  {i:>2}  {r['user_id']:>6}  {r['score']:6.3f}  {r['gender'] or '-':6} {r['age'] or '-':>3} "
                       f"{r['occupation'] or '-'}")


index_option = click.option("--index", "index_dir", default=None, help="Serving directory [config paths.index].")
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
@click.option("--user", "user_id", type=int, default=None, help="A known user id.")
@click.option("--gender", default=None, help="New user: gender (M/F).")
@click.option("--age", type=int, default=None, help="New user: age in years.")
@click.option("--occupation", default=None, help="New user: occupation (e.g. writer).")
@click.option("--include-seen", is_flag=True, help="Do not exclude movies the user rated in training.")
@k_option
@json_option
@friendly_errors
@_value_errors
def recommend_cmd(config_path, overrides, index_dir, user_id, gender, age, occupation, include_seen, k, as_json):
    """Top movies for a known user (--user) or a new one (--gender/--age/--occupation)."""
    rec = _recommender(config_path, overrides, index_dir)
    if user_id is not None:
        rows = rec.recommend(user_id, k=k, exclude_seen=not include_seen)
        _print_rows(rows, f"top {k} for user {user_id}:", as_json)
    elif gender or age or occupation:
        rows = rec.recommend_for_profile(gender=gender, age=age, occupation=occupation, k=k)
        _print_rows(rows, f"top {k} for a new user (gender={gender}, age={age}, occupation={occupation}):", as_json)
    else:
        raise RecsysError("give --user ID, or a profile with --gender/--age/--occupation")


def _movie_query(fn):
    """The options and error handling shared by the commands that take one known movie."""
    for decorate in reversed((config_option, set_option, index_option,
                              click.option("--movie", "movie_id", type=int, required=True, help="A known movie id."),
                              k_option, json_option, friendly_errors, _value_errors)):
        fn = decorate(fn)
    return fn


@main.command("similar")
@_movie_query
def similar_cmd(config_path, overrides, index_dir, movie_id, k, as_json):
    """Movies most similar to a movie (cosine of the movie vectors)."""
    rec = _recommender(config_path, overrides, index_dir)
    title = rec.movies.at[rec._movie(movie_id), "title"]
    _print_rows(rec.similar_movies(movie_id, k=k), f"{k} movies most similar to {movie_id} ({title}):", as_json)


@main.command("who-likes")
@_movie_query
def who_likes_cmd(config_path, overrides, index_dir, movie_id, k, as_json):
    """Users predicted to rate a movie highest."""
    rec = _recommender(config_path, overrides, index_dir)
    _print_rows(rec.users_for_movie(movie_id, k=k), f"{k} users most likely to love movie {movie_id}:", as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
