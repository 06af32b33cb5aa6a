"""The prepared split a research benchmark reads: config, all ratings, and the tuning view."""

from __future__ import annotations

import sys


def load_split(config: str, no_validation: str):
    """(cfg, data, view) for ``config``: ``recsys.evaluation.load_data`` of its prepared data and
    ``data.tuning_view()`` (train without validation, validation as test). Exits with one
    ``error:`` line on a config or data error, or with ``no_validation`` when the split has no
    validation ratings."""
    from recsys.config import load_config
    from recsys.errors import RecsysError
    from recsys.evaluation import load_data

    try:
        cfg = load_config(config)
        data = load_data(cfg.paths.prepared)
    except RecsysError as err:
        sys.exit(f"error: {err}")
    view = data.tuning_view()
    if view is None:
        sys.exit(f"error: {cfg.paths.prepared} has no validation split: {no_validation}")
    return cfg, data, view
