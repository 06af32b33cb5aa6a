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


@data_group.command("synth")
@config_option
@set_option
@click.option("--ratings", type=int, default=None, help="Number of ratings [config synth.ratings].")
@click.option("--users", type=int, default=None, help="Number of users [config synth.users].")
@click.option("--movies", type=int, default=None, help="Number of movies [config synth.movies].")
@click.option("--format", "fmt", type=click.Choice(["ml-1m", "ml-latest"]), default=None,
              help="File format [config synth.format].")
@click.option("--seed", type=int, default=None, help="Random seed [config synth.seed].")
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Target directory [config paths.raw].")
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
    if dest is None:
        dest = load_config(config_path, overrides).paths.raw
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


if __name__ == "__main__":  # pragma: no cover
    main()
