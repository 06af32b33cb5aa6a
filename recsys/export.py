"""Load a trained model and export user and movie vectors to Parquet.

``vectors/users.parquet``: user_id (original id), vector (list<float32>[D]), bias (b_u), model_version
``vectors/movies.parquet``: movie_id (original id), vector ([D]), bias (b_m), model_version
``vectors/vectors.json``: mu, dimension, model version, counts, sha256 of both files.

Every user and movie of the prepared tables is exported, including those never seen in
training (their id maps to the OOV row, so their vector comes from attributes alone: the
cold-start vectors). Rows are encoded and run through the towers in batches, and written
with a Parquet writer batch by batch, so memory stays bounded for millions of rows.
"""

from __future__ import annotations

import hashlib
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



def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


class TrainedModel:
    """A trained :class:`RatingModel` rebuilt from ``model.json`` and its best weights."""

    def __init__(self, model_dir: str | Path):
        import tensorflow as tf

        from recsys.config import ModelConfig
        from recsys.config import _build as build_section
        from recsys.model import RatingModel

        self.dir = Path(model_dir)
        info_path = self.dir / "model.json"
        if not info_path.is_file():
            raise ArtifactError(f"{info_path} not found: train a model first (python train.py --config ...)")
        self.info = json.loads(info_path.read_text())
        self.spec = self.info["feature_spec"]
        self.features = self.spec["features"]
        self.mu = float(self.info["mu"])
        # keys added after a model was trained take the value that reproduces it (feature off), not
        # today's default: a model.json without retrieval_dim was trained without those heads
        saved = {"retrieval_dim": 0, "user_history_length": 0, **self.info["config"]["model"]}
        cfg = build_section(ModelConfig, saved, "model", str(info_path))
        self.model = RatingModel(self.spec, self.mu, cfg)
        dummy = {f["name"]: tf.zeros([1, *f["shape"]], tf.int64) for f in self.features if f["tower"] != "label"}
        self.model(dummy)
        weights = self.dir / self.info["weights"]
        if not Path(str(weights) + ".index").is_file():
            raise ArtifactError(f"model weights {weights}.index not found in {self.dir}")
        tf.train.Checkpoint(model=self.model).read(str(weights)).expect_partial()
        self.version = self._version(weights)

    @staticmethod
    def _version(weights: Path) -> str:
        digest = hashlib.sha256()
        for path in sorted(weights.parent.glob(weights.name + "*")):
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def tower_names(self, tower: str) -> list[str]:
        return [f["name"] for f in self.features if f["tower"] == tower]

    @staticmethod
    def _heads(tower, encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import tensorflow as tf

        v, b, r = tower.heads({k: tf.constant(v, tf.int64) for k, v in encoded.items()}, training=False)
        return v.numpy().astype(np.float32), b.numpy().astype(np.float32), r.numpy().astype(np.float32)

    def user_heads(self, encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """u [N, D], b_u [N] and the retrieval-only u_r [N, R] (R = model.retrieval_dim, may be 0)."""
        return self._heads(self.model.user_tower, encoded)

    def movie_heads(self, encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """m [N, D], b_m [N] and the retrieval-only m_r [N, R]."""
        return self._heads(self.model.movie_tower, encoded)

    def user_vectors(self, encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """u [N, D] float32 and b_u [N] for encoded user features (arrays of length N)."""
        return self.user_heads(encoded)[:2]

    def movie_vectors(self, encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """m [N, D] float32 and b_m [N] for encoded movie features."""
        return self.movie_heads(encoded)[:2]

    @property
    def ranking(self) -> str:
        """What top-k lists rank by: "retrieval" (trained with the retrieval loss) or "rating"."""
        return "retrieval" if self.model.cfg.retrieval_weight > 0 else "rating"

    def movie_priors(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """temperature * c_m [N]: with it, <u, m> + <u_r, m_r> + prior ranks movies as the retrieval score does."""
        import tensorflow as tf

        prior = self.model.prior(tf.constant(encoded["movie_id"], tf.int64)).numpy()
        return (self.model.cfg.retrieval_temperature * prior).astype(np.float32)


def _write_vectors(path: Path, id_name: str, table_path: Path, names: list[str], fn, version: str,
                   batch: int, prior_fn=None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(table_path)
    writer = None
    rows = 0
    try:
        for rb in source.iter_batches(batch_size=batch, columns=[id_name] + [ENC + n for n in names]):
            frame = rb.to_pandas()
            encoded = encoded_columns(frame, names)
            vec, bias, extra = fn(encoded)
            columns = {
                id_name: pa.array(frame[id_name].to_numpy(np.int64)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1]),
                "bias": pa.array(bias),
            }
            if extra.shape[1]:
                columns["retrieval_vector"] = pa.FixedSizeListArray.from_arrays(pa.array(extra.reshape(-1)),
                                                                                extra.shape[1])
            if prior_fn is not None:
                columns["prior"] = pa.array(prior_fn(encoded))
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


def export_vectors(model_dir: str | Path, prepared_dir: str | Path, out_dir: str | Path, batch: int = 8192) -> dict:
    """Write users/movies vectors for every prepared user and movie; returns vectors.json."""
    prepared, out = Path(prepared_dir), Path(out_dir)
    trained = TrainedModel(model_dir)
    manifest_sha = sha256_file(prepared / "manifest.json")
    if manifest_sha != trained.info["manifest_sha256"]:
        raise ArtifactError(f"{prepared}/manifest.json differs from the one {model_dir} was trained on; "
                            "export with the prepared data the model was trained on")
    with replacing(out, "export", "paths.vectors", signature=("vectors.json",)) as tmp:
        n_users = _write_vectors(tmp / "users.parquet", "user_id", prepared / "users.parquet",
                                 trained.tower_names("user"), trained.user_heads, trained.version, batch)
        n_movies = _write_vectors(tmp / "movies.parquet", "movie_id", prepared / "movies.parquet",
                                  trained.tower_names("movie"), trained.movie_heads, trained.version, batch,
                                  trained.movie_priors)
        info = {
            "model_dir": str(model_dir), "prepared_dir": str(prepared), "model_version": trained.version,
            "manifest_sha256": manifest_sha, "mu": trained.mu, "dimension": trained.model.cfg.output_dim,
            "users": n_users, "movies": n_movies,
            "files": {name: sha256_file(tmp / name) for name in ("users.parquet", "movies.parquet")},
            "form": "score(user, movie) = mu + b_u + b_m + <u, m>; movies indexed as [m, b_m], users as [u, b_u]",
            "ranking": trained.ranking,
            "ranking_form": ("top-k by <u, m> + <u_r, m_r> + prior (prior = temperature * c_m: the retrieval "
                             "score times the temperature; u_r, m_r: the retrieval_vector columns)"
                             if trained.ranking == "retrieval" else "top-k by b_m + <u, m>"),
            "temperature": trained.model.cfg.retrieval_temperature,
            "retrieval_dim": trained.model.cfg.retrieval_dim,
        }
        (tmp / "vectors.json").write_text(json.dumps(info, indent=2))
    _log(f"{n_users:,} user and {n_movies:,} movie vectors (dimension {info['dimension']}, model "
         f"{trained.version}) -> {out}")
    return info


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
    for table, key in (("users", "user_id"), ("movies", "movie_id")):
        t = pq.read_table(d / f"{table}.parquet")
        versions = set(t.column("model_version").unique().to_pylist())
        if versions != {info["model_version"]}:
            raise ArtifactError(f"{d / table}.parquet holds vectors of model version(s) {sorted(versions)}, "
                                f"but vectors.json says {info['model_version']}")
        out[table] = {
            "ids": t.column(key).to_numpy(),
            "vectors": _matrix(t, "vector"),
            "bias": t.column("bias").to_numpy().astype(np.float32),
            "retrieval": _matrix(t, "retrieval_vector"),  # [N, 0] for a model without retrieval-only heads
        }
        if "prior" in t.column_names:
            out[table]["prior"] = t.column("prior").to_numpy().astype(np.float32)
    return out


def _matrix(t, column: str) -> np.ndarray:
    """A fixed-size-list column as float32 [rows, width]; [rows, 0] when the column is absent."""
    if column not in t.column_names:
        return np.zeros((len(t), 0), np.float32)
    return np.asarray(t.column(column).combine_chunks().flatten().to_numpy(), np.float32).reshape(len(t), -1)
