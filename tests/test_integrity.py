"""Artifacts that do not belong together, and records that are checked where data is read.

* The prepared manifest's version: an older or newer manifest stops every reader with one line.
* The Parquet tables' sha256 (``manifest["tables"]``, each shard's ``table_sha256``): an altered,
  missing or stray table is named before training, export or the index build reads it.
* Model, vectors, index and prepared data: export, the index build and ``Recommender.load`` refuse
  a model, vectors or prepared data of another version or dataset, naming both sides.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from recsys.errors import ArtifactError
from tests.conftest import ENV, ROOT, train_cmd


def _manifest_dir(tmp_path: Path, **fields) -> Path:
    d = tmp_path / "prepared"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"splits": {}, **fields}))
    return d


@pytest.mark.parametrize("version, message", [
    (None, r"manifest version none \(no manifest_version\), older than this recsys .* reads \(version 1\): re-run"),
    (0, r"manifest version 0, older than this recsys .* reads \(version 1\)"),
    (2, r"manifest version 2, newer than this recsys .* reads \(version 1\): upgrade recsys"),
])
def test_manifest_of_another_version_is_refused(tmp_path, version, message):
    from recsys.prepare.job import load_manifest

    fields = {} if version is None else {"manifest_version": version}
    with pytest.raises(ArtifactError, match=message):
        load_manifest(_manifest_dir(tmp_path, **fields), verify=False)


def test_manifest_of_this_version_loads(tmp_path):
    from recsys.prepare.job import MANIFEST_VERSION, load_manifest

    assert load_manifest(_manifest_dir(tmp_path, manifest_version=MANIFEST_VERSION), verify=False)["splits"] == {}


# ---------------------------------------------------------------------------- tables (Spark-prepared data)


def _copy(train_data, tmp_path: Path) -> tuple[Path, list[str]]:
    base, overrides = train_data
    prepared = tmp_path / "prepared"
    shutil.copytree(base / "prepared", prepared)
    return prepared, [o for o in overrides if not o.startswith("paths.prepared=")] + [f"paths.prepared={prepared}"]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _part(prepared: Path, split: str, index: int) -> Path:
    manifest = json.loads((prepared / "manifest.json").read_text())
    return prepared / manifest["splits"][split]["shards"][index]["table"]


TABLE_DAMAGE = {
    "flipped_ratings_part": (lambda p: _flip(_part(p, "train", 1)),
                             lambda p: rf"table {_part(p, 'train', 1)} is corrupt: sha256 differs from {p}/manifest.json"),
    "missing_movies_table": (lambda p: (p / "movies.parquet").unlink(),
                             lambda p: rf"table {p}/movies.parquet listed in {p}/manifest.json is missing"),
    "stray_ratings_part": (lambda p: shutil.copy(_part(p, "train", 0), p / "ratings_valid" / "part-09999.parquet"),
                           lambda p: rf"{p}/ratings_valid/part-09999.parquet is not listed in {p}/manifest.json"),
    "manifest_without_table_checksums": (
        lambda p: _edit_manifest(p, lambda m: m["splits"]["test"]["shards"][0].pop("table_sha256")),
        lambda p: r"records no sha256 for the ratings_test/ tables \(written by an older prepare\)"),
}


def _edit_manifest(prepared: Path, change) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    change(manifest)
    (prepared / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TABLE_DAMAGE))
def test_altered_tables_are_named_when_the_manifest_is_loaded(train_data, tmp_path, case):
    from recsys.prepare.job import load_manifest

    prepared, _ = _copy(train_data, tmp_path)
    load_manifest(prepared)  # intact: every table matches
    damage, message = TABLE_DAMAGE[case]
    damage(prepared)
    with pytest.raises(ArtifactError, match=message(prepared)):
        load_manifest(prepared)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["table", "version"])
def test_training_stops_on_an_altered_table_or_an_older_manifest(train_data, tmp_path, case):
    """train.py stops before the first step with one error line (exit 2): a flipped byte in a
    ratings Parquet part (the TFRecords are intact), or a manifest of an older version."""
    prepared, overrides = _copy(train_data, tmp_path)
    if case == "table":
        part = _part(prepared, "valid", 0)
        _flip(part)
        expected = (f"error: table {part} is corrupt: sha256 differs from {prepared}/manifest.json "
                    "(re-run prepare, or restore the file)")
    else:
        _edit_manifest(prepared, lambda m: m.pop("manifest_version"))
        expected = (f"error: {prepared}/manifest.json is manifest version none (no manifest_version), older than "
                    "this recsys 0.1.0 reads (version 1): re-run `spark-submit jobs/prepare.py --config ...`")
    proc = subprocess.run(train_cmd(overrides, 1, tmp_path / "m"), env=ENV, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [expected], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "m" / "checkpoints").exists()


# ---------------------------------------------------------------------------- model, vectors, index, data


@pytest.fixture(scope="module")
def served(train_data, tmp_path_factory):
    """A small model trained 1 epoch on 1 rank, exported and indexed: (config, its directory)."""
    from recsys.config import load_config
    from recsys.export import export_vectors
    from recsys.serving import build_serving_dir

    base, overrides = train_data
    d = tmp_path_factory.mktemp("integrity")
    proc = subprocess.run(train_cmd(overrides, 1, d / "model", "--set", "train.epochs=1"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(ROOT / "conf/default.yaml", overrides + [f"paths.model={d / 'model'}",
                                                               f"paths.vectors={d / 'vectors'}",
                                                               f"paths.index={d / 'index'}"])
    export_vectors(cfg.paths.model, cfg.paths.prepared, cfg.paths.vectors)
    build_serving_dir(cfg)
    return cfg


def _reprepared(src: Path, dest: Path) -> Path:
    """A copy of a prepared directory as a new prepare run leaves it: the same tables, another
    manifest (its ``created`` time), so another manifest sha256."""
    shutil.copytree(src, dest)
    _edit_manifest(dest, lambda m: m.update(created="2031-01-01T00:00:00+00:00"))
    return dest


@pytest.mark.slow
def test_export_refuses_prepared_data_the_model_was_not_trained_on(served, tmp_path):
    from recsys.export import export_vectors

    other = _reprepared(Path(served.paths.prepared), tmp_path / "other")
    with pytest.raises(ArtifactError, match=rf"{other}/manifest.json and {served.paths.model}/model.json come from "
                                            r"different prepared data \(manifest sha256 \w{12} vs \w{12}\)"):
        export_vectors(served.paths.model, other, tmp_path / "vectors")
    assert not (tmp_path / "vectors").exists()
    # the same data with an altered table: named before it is read
    shutil.rmtree(other)
    shutil.copytree(served.paths.prepared, other)
    _flip(other / "users.parquet")
    with pytest.raises(ArtifactError, match=rf"table {other}/users.parquet is corrupt"):
        export_vectors(served.paths.model, other, tmp_path / "vectors")


@pytest.mark.slow
def test_index_build_refuses_prepared_data_changed_after_the_export(served, tmp_path):
    """Export, then prepare again into the same folder, then build the index: the tables (titles,
    seen ratings) would no longer be the exported vectors' data. One error naming both."""
    import dataclasses

    from recsys.export import export_vectors
    from recsys.serving import build_serving_dir

    prepared = tmp_path / "prepared"
    shutil.copytree(served.paths.prepared, prepared)
    paths = dataclasses.replace(served.paths, prepared=str(prepared), vectors=str(tmp_path / "vectors"),
                                index=str(tmp_path / "index"))
    cfg = dataclasses.replace(served, paths=paths)
    export_vectors(cfg.paths.model, prepared, cfg.paths.vectors)
    _edit_manifest(prepared, lambda m: m.update(created="2031-01-01T00:00:00+00:00"))  # "prepare ran again"
    with pytest.raises(ArtifactError, match=rf"{prepared}/manifest.json and {tmp_path}/vectors/vectors.json come "
                                            r"from different prepared data .*export again"):
        build_serving_dir(cfg)
    assert not (tmp_path / "index").exists()


def _other_model(served, dest: Path, manifest_sha: str | None = None) -> Path:
    """A copy of the model artifact with other weights (or another recorded prepared data), re-sealed."""
    import tensorflow as tf

    from recsys.export import sha256_file
    from recsys.models import load_model
    from recsys.models.contract import MODEL_JSON, weights_version, write_weights

    shutil.copytree(served.paths.model, dest)
    info = json.loads((dest / MODEL_JSON).read_text())
    if manifest_sha is None:
        tm = load_model(dest)
        var = tm.model.trainable_variables[0]
        var.assign_add(tf.ones_like(var))
        write_weights(tm.model, dest / tm.info["weights"])
    else:
        info["manifest_sha256"] = manifest_sha
    info["version"] = weights_version(dest)
    info["files"] = {name: sha256_file(dest / name) for name in info["files"]}
    (dest / MODEL_JSON).write_text(json.dumps(info))
    return dest


@pytest.mark.slow
def test_recommender_load_refuses_a_model_or_prepared_data_from_elsewhere(served, tmp_path):
    from recsys.checksums import json_digest, sha256_file
    from recsys.models.contract import weights_version
    from recsys.serving import Recommender

    index = Path(served.paths.index)
    rec = Recommender.load(index, prepared=served.paths.prepared)  # everything belongs together
    assert rec.manifest_sha256 == sha256_file(Path(served.paths.prepared) / "manifest.json")
    # prepared data of another prepare run (what `recsys evaluate` passes): refused, naming both
    other = _reprepared(Path(served.paths.prepared), tmp_path / "other")
    with pytest.raises(ArtifactError, match=rf"{other}/manifest.json and {index}/index.json come from different "
                                            "prepared data"):
        Recommender.load(index, prepared=other)
    with pytest.raises(ArtifactError, match="come from different prepared data"):
        rec.check_prepared(other)
    # a cold-start model with other weights: refused at load, not at the first cold-start query
    model = _other_model(served, tmp_path / "model")
    with pytest.raises(ArtifactError, match=rf"the model in {model} is version {weights_version(model)}, but "
                                            rf"{index}/index.json was built from version {rec.info['model_version']}"):
        Recommender.load(index, model_dir=model)
    # the model inside the index re-labelled with other prepared data, index.json re-sealed around it
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    shutil.rmtree(copy / "model")
    _other_model(served, copy / "model", manifest_sha="0" * 64)
    info = json.loads((copy / "index.json").read_text())
    info["files"] = {name: sha256_file(copy / name) for name in info["files"]}
    info["sha256"] = json_digest(info)
    (copy / "index.json").write_text(json.dumps(info))
    with pytest.raises(ArtifactError, match=rf"{copy}/index.json and {copy}/model/model.json come from different "
                                            r"prepared data \(manifest sha256 \w{12} vs 000000000000\)"):
        Recommender.load(copy)
