"""Load a trained model artifact and export its user and movie vectors to Parquet.

``vectors/users.parquet``: user_id (original id), score, rank (list<float32>), model_version
``vectors/movies.parquet``: movie_id (original id), score, rank, similarity, model_version
``vectors/vectors.json``: model kind and version, score offset, widths, counts, sha256 of both files,
and ``foldin``: the fold-in settings and the count of users refined (None when off).

The vectors are the model contract's (recsys/models/contract.py): ``score(user, movie) =
offset + <user score, movie score>``, top-k by ``<user rank, movie rank>``, similarity by
the cosine of ``similarity``. With ``export.foldin_weight`` > 0 the users' rank vectors are then
refined by the implicit-ALS fold-in (recsys/foldin.py): the same forms, other user rank vectors.
For a model scored by pairs (``factorised`` false in vectors.json, e.g. NeuMF) the rank vectors
are its candidate retriever and its score is the model's pair score (served by re-ranking,
recsys/reranking.py); vectors.json names the features the model reads (``user_features``,
``movie_features``) so the index can carry them. Export knows no model's formula.

Every user and movie of the prepared tables is exported, including those never seen in
training (their id maps to the OOV row, so their vector comes from attributes alone: the
cold-start vectors). Rows are encoded and run through the towers in batches, and written
with a Parquet writer batch by batch, so memory stays bounded for millions of rows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from recsys.checksums import sha256_file  # noqa: F401  (re-exported)
from recsys.errors import ArtifactError  # noqa: E402
from recsys.features import ENC, encoded_columns  # noqa: E402
from recsys.outputs import replacing  # noqa: E402

FACTORISED_FORM = ("score(user, movie) = score_offset + <user score, movie score> (the predicted rating when "
                   "rates); top-k by <user rank, movie rank>; movie similarity: cosine of similarity")
PAIR_FORM = ("score(user, movie) = the model's pair score (not factorised); top-k re-ranks candidates by it "
             "(every movie, or the top of <user rank, movie rank>); movie similarity: cosine of similarity")


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def _write_vectors(path: Path, id_name: str, table_path: Path, names: list[str], fn, version: str,
                   batch: int) -> int:
    """Encode rows of a prepared table batch by batch through ``fn`` (encoded columns -> named
    vector arrays) and write one list<float32> column per name; bounded memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(table_path)
    writer = None
    rows = 0
    try:
        for rb in source.iter_batches(batch_size=batch, columns=[id_name] + [ENC + n for n in names]):
            frame = rb.to_pandas()
            vectors = fn(encoded_columns(frame, names))
            columns = {id_name: pa.array(frame[id_name].to_numpy(np.int64))}
            for name, vec in sorted(vectors.items()):
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1])
            columns["model_version"] = pa.array([version] * len(frame))
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            rows += len(frame)
    finally:
        if writer is not None:
            writer.close()
    return rows


def export_vectors(model_dir: str | Path, prepared_dir: str | Path, out_dir: str | Path, batch: int = 8192,
                   settings=None) -> dict:
    """Write users/movies vectors for every prepared user and movie; returns vectors.json.

    ``settings``: the config's ``export`` section (None: no fold-in); with ``foldin_weight`` > 0
    a factorised model's user rank vectors are refined by :func:`_fold_in_users`."""
    from recsys.models import load_model

    from recsys.prepare.job import MANIFEST, load_manifest

    prepared, out = Path(prepared_dir), Path(out_dir)
    trained = load_model(model_dir)
    load_manifest(prepared)  # its version, and the users/movies tables read below, checked against it
    manifest_sha = sha256_file(prepared / MANIFEST)
    check_same_data(prepared / MANIFEST, manifest_sha, Path(model_dir) / "model.json",
                    trained.info.get("manifest_sha256"), "export with the prepared data the model was trained on")
    with replacing(out, "export", "paths.vectors", signature=("vectors.json",)) as tmp:
        n_users = _write_vectors(tmp / "users.parquet", "user_id", prepared / "users.parquet",
                                 trained.tower_names("user"), trained.user_vectors, trained.version, batch)
        n_movies = _write_vectors(tmp / "movies.parquet", "movie_id", prepared / "movies.parquet",
                                  trained.tower_names("movie"), trained.movie_vectors, trained.version, batch)
        foldin = None
        if settings is not None and settings.foldin_weight > 0:
            if trained.model.factorised:
                foldin = _fold_in_users(tmp, prepared, settings, batch)
            else:
                _log(f"export.foldin_weight ignored: the {trained.kind} model is scored by pairs, "
                     f"its rank vectors only retrieve candidates")
        info = {
            "model_dir": str(Path(model_dir).resolve()), "prepared_dir": str(prepared.resolve()),
            "model_version": trained.version, "kind": trained.kind, "label": trained.model.label, "rates": trained.model.rates,
            "manifest_sha256": manifest_sha, "score_offset": trained.model.score_offset,
            "users": n_users, "movies": n_movies,
            "files": {name: sha256_file(tmp / name) for name in ("users.parquet", "movies.parquet")},
            "factorised": trained.model.factorised, "foldin": foldin,
            "user_features": trained.tower_names("user"), "movie_features": trained.tower_names("movie"),
            "form": (FACTORISED_FORM if trained.model.factorised else PAIR_FORM),
        }
        (tmp / "vectors.json").write_text(json.dumps(info, indent=2))
    _log(f"{n_users:,} user and {n_movies:,} movie vectors of the {trained.kind} model {trained.version} -> {out}")
    return info


def _fold_in_users(tmp: Path, prepared: Path, settings, batch: int) -> dict:
    """Rewrite ``tmp/users.parquet`` with each user's rank vector folded in (recsys/foldin.py) over
    ``tmp/movies.parquet``'s rank vectors and the user's train + validation movies (the movies
    serving excludes as seen). Users are rewritten ``batch`` at a time; the ratings are held as
    two int32 row columns. Returns the settings used and the count of users changed."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.evaluation import pair_matrix
    from recsys.foldin import fold_in, gramian
    from recsys.prepare.job import load_manifest

    splits = [s for s in ("train", "valid") if s in load_manifest(prepared)["splits"]]
    if "train" not in splits:
        raise ArtifactError(f"{prepared}: the manifest lists no train split, so export.foldin_weight has no "
                            f"history to fold in: prepare the data again, or set export.foldin_weight=0")
    movies = pq.read_table(tmp / "movies.parquet", columns=["movie_id", "rank"])
    V = _matrix(movies, "rank").astype(np.float64)
    mrow = pd.Index(movies.column("movie_id").to_numpy())
    urow = pd.Index(pq.read_table(tmp / "users.parquet", columns=["user_id"]).column("user_id").to_numpy())
    rows, cols = [], []
    for split in splits:
        path = prepared / f"ratings_{split}"
        pairs = pq.read_table(path, columns=["user_id", "movie_id"])
        for index, key, out in ((urow, "user_id", rows), (mrow, "movie_id", cols)):
            found = index.get_indexer(pairs.column(key).to_numpy())
            if (found < 0).any():
                raise ArtifactError(f"{path}: {key} {pairs.column(key).to_numpy()[found < 0][0]} is not in the "
                                    f"{key.split('_')[0]}s table of {prepared}: prepare the data again")
            out.append(found.astype(np.int32))
        del pairs, found
    X = pair_matrix(pd.DataFrame({"u": np.concatenate(rows), "m": np.concatenate(cols)}), len(urow), len(V))
    del rows, cols
    gram = gramian(V, settings.foldin_unobserved_weight, settings.foldin_ridge)  # shared by every batch
    writer, start, changed = None, 0, 0
    with_ratings = np.diff(X.indptr) > 0
    source = pq.ParquetFile(tmp / "users.parquet")
    try:
        for rb in source.iter_batches(batch_size=batch):
            table = pa.Table.from_batches([rb])
            stop = start + len(table)
            U = fold_in(_matrix(table, "rank"), V, X[start:stop], settings.foldin_weight,
                        settings.foldin_unobserved_weight, settings.foldin_ridge, gram)
            changed += int(with_ratings[start:stop].sum())
            rank = pa.FixedSizeListArray.from_arrays(pa.array(U.reshape(-1)), U.shape[1])
            table = table.set_column(table.column_names.index("rank"), "rank", rank)
            if writer is None:
                writer = pq.ParquetWriter(tmp / "users.folded.parquet", table.schema)
            writer.write_table(table)
            start = stop
    finally:
        source.close()
        if writer is not None:
            writer.close()
    if writer is not None:  # an empty users table has nothing to rewrite
        os.replace(tmp / "users.folded.parquet", tmp / "users.parquet")
    _log(f"fold-in: {changed:,} of {len(urow):,} user rank vectors refined from {X.nnz:,} train + validation "
         f"ratings (weight {settings.foldin_weight:g}, w0 {settings.foldin_unobserved_weight:g}, "
         f"ridge {settings.foldin_ridge:g})")
    return {"weight": settings.foldin_weight, "unobserved_weight": settings.foldin_unobserved_weight,
            "ridge": settings.foldin_ridge, "users": changed}


def check_same_data(a: Path, a_sha: str | None, b: Path, b_sha: str | None, fix: str) -> None:
    """One :class:`ArtifactError` naming both sides when ``a`` and ``b`` come from different prepared
    data: ``a_sha`` and ``b_sha`` are the sha256 of (or recorded for) the prepared ``manifest.json``."""
    if a_sha != b_sha:
        raise ArtifactError(f"{a} and {b} come from different prepared data (manifest sha256 {str(a_sha)[:12]} vs "
                            f"{str(b_sha)[:12]}): {fix}")


def load_vectors(vectors_dir: str | Path) -> dict:
    """vectors.json plus the two tables as numpy arrays, checksums verified."""
    import pyarrow.parquet as pq

    d = Path(vectors_dir)
    info_path = d / "vectors.json"
    if not info_path.is_file():
        raise ArtifactError(f"{info_path} not found: run python jobs/export.py --config ... first")
    info = json.loads(info_path.read_text())
    for name, digest in info["files"].items():
        if not (d / name).is_file() or sha256_file(d / name) != digest:
            raise ArtifactError(f"{d / name} is missing or does not match the sha256 in {info_path}")
    out = {"info": info}
    for table, key, names in (("users", "user_id", ("score", "rank")), ("movies", "movie_id", ("score", "rank", "similarity"))):
        t = pq.read_table(d / f"{table}.parquet")
        versions = set(t.column("model_version").unique().to_pylist())
        if versions != {info["model_version"]}:
            raise ArtifactError(f"{d / table}.parquet holds vectors of model version(s) {sorted(versions)}, "
                                f"but vectors.json says {info['model_version']}")
        out[table] = {"ids": t.column(key).to_numpy(), **{name: _matrix(t, name) for name in names}}
    return out


def _matrix(t, column: str) -> np.ndarray:
    """A fixed-size-list column as float32 [rows, width]; [rows, 0] when the column is absent."""
    if column not in t.column_names:
        return np.zeros((len(t), 0), np.float32)
    return np.asarray(t.column(column).combine_chunks().flatten().to_numpy(), np.float32).reshape(len(t), -1)
