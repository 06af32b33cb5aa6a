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


@pytest.mark.slow
def test_a_moved_run_folder_builds_its_index_from_the_configured_paths(served, tmp_path):
    """Model, prepared data and vectors copied to another place (another machine, a volume mounted
    elsewhere) and the originals gone: the index builds from the config's paths, not from the
    absolute paths vectors.json recorded at export, and serves the same lists."""
    import dataclasses

    from recsys.serving import Recommender, build_serving_dir

    moved = tmp_path / "elsewhere"
    for name in ("model", "prepared", "vectors"):
        shutil.copytree(getattr(served.paths, name), moved / name)
    recorded = json.loads((moved / "vectors" / "vectors.json").read_text())
    assert Path(recorded["model_dir"]) == Path(served.paths.model).resolve()  # the old place, now to be gone
    paths = dataclasses.replace(served.paths, model=str(moved / "model"), prepared=str(moved / "prepared"),
                                vectors=str(moved / "vectors"), index=str(moved / "index"))
    users = [int(u) for u in Recommender.load(served.paths.index).users.user_id[:3]]
    away = {name: Path(getattr(served.paths, name)) for name in ("model", "prepared")}
    for name, path in away.items():
        path.rename(path.with_name(path.name + ".away"))
    try:
        build_serving_dir(dataclasses.replace(served, paths=paths))
        lists = Recommender.load(moved / "index").recommend_batch(users, k=5)
    finally:
        for path in away.values():
            path.with_name(path.name + ".away").rename(path)
    assert lists == Recommender.load(served.paths.index).recommend_batch(users, k=5)
    # a config whose paths.model holds no model says so in one line
    wrong = dataclasses.replace(paths, model=str(tmp_path / "nothing"), index=str(tmp_path / "index2"))
    with pytest.raises(ArtifactError, match=r"paths.model .*nothing holds no trained model"):
        build_serving_dir(dataclasses.replace(served, paths=wrong))


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


# ---------------------------------------------------------------------------- resume


def _checkpoint(path) -> dict:
    """Every variable of a checkpoint by key, read raw (``tf.train.load_checkpoint``), bookkeeping left out."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(path))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") and not k.startswith("save_counter")}


# Measured on the tiny data (1 rank, train.deterministic, seed 5, 2 epochs): resumed after epoch 1
# vs uninterrupted, the model weights differ by 0.096 (relative L2); a run with another seed, the
# scale of a resume that lost the weights, differs by 1.41. Two uninterrupted runs differ by 0.0.
# The resumed run is not bit-equal because its input pipeline restarts (epoch 2 reads the shuffled
# stream from its start, the uninterrupted run reads on) and dropout draws restart from the seed.
RESUME_WEIGHTS_TOLERANCE = 0.25


@pytest.mark.slow
def test_resume_restores_every_variable_and_ends_where_an_uninterrupted_run_ends(train_data, tmp_path):
    """1 rank, fixed seed, deterministic ops: (1) right after ``--resume`` restores epoch 1, every
    variable of the run (model, optimizer slots, averages, step, epoch) equals the checkpoint's,
    read raw; (2) the resumed run ends at the uninterrupted run's step and epoch, with final
    weights within RESUME_WEIGHTS_TOLERANCE (relative L2) of it."""
    import sys

    import numpy as np

    _, overrides = train_data
    det = ["train.deterministic=true", "train.seed=5", "train.early_stopping_patience=10"]
    flags = [a for o in det for a in ("--set", o)]
    for name, epochs in (("clean", 2), ("resumed", 1)):
        proc = subprocess.run(train_cmd(overrides, 1, tmp_path / name, *flags, "--set", f"train.epochs={epochs}"),
                              env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "resume.py"
    small = ["train.batch_size=256", "model.hidden_units=[32]", "model.embedding_dim=8", "model.output_dim=8",
             "train.threads_per_rank=1", "train.epochs=2"]
    script.write_text(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
import tensorflow as tf
import recsys.training as T
from recsys.config import load_config

restore = T.restore

def restore_and_compare(run, resume):
    progress = restore(run, resume)
    saved = tf.train.load_checkpoint(run.manager.latest_checkpoint)
    live = tf.train.load_checkpoint(run.manager.checkpoint.write({str(tmp_path / 'live' / 'now')!r}))
    keys = [k for k in saved.get_variable_to_shape_map()
            if not k.startswith(('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter'))]
    differ = [k for k in keys if not np.array_equal(saved.get_tensor(k), live.get_tensor(k))]
    print('RESTORED', len(keys), 'DIFFER', differ, flush=True)
    return progress

T.restore = restore_and_compare
cfg = load_config({str(ROOT / 'conf/default.yaml')!r}, {overrides + small + det!r} + ['paths.model={tmp_path}/resumed'])
T.train(cfg, resume=True)
""")
    proc = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = [line.split() for line in proc.stdout.splitlines() if line.startswith("RESTORED")]
    assert len(restored) == 1 and int(restored[0][1]) > 20 and restored[0][3:] == ["[]"], proc.stdout[-2000:]
    assert "resumed from" in proc.stderr and "epoch 2/2" in proc.stderr and "epoch 1/2" not in proc.stderr

    clean, resumed = (_checkpoint(tmp_path / name / "checkpoints" / "ckpt-2") for name in ("clean", "resumed"))
    assert clean.keys() == resumed.keys()
    for key in ("step/.ATTRIBUTES/VARIABLE_VALUE", "epoch/.ATTRIBUTES/VARIABLE_VALUE"):
        assert int(resumed[key]) == int(clean[key]) > 0, key
    model = [k for k in clean if k.startswith("model/")]
    distance = np.sqrt(sum(((clean[k] - resumed[k]) ** 2).sum() for k in model))
    relative = distance / np.sqrt(sum((clean[k] ** 2).sum() for k in model))
    assert relative < RESUME_WEIGHTS_TOLERANCE, relative


@pytest.mark.slow
def test_evaluate_refuses_a_served_model_from_other_prepared_data(served, tmp_path):
    """`recsys evaluate` (and each --compare) scores a serving directory only on the prepared data
    it was built from: another prepare run's data is one clear error, never wrong numbers."""
    from recsys.evaluation import evaluate

    other = _reprepared(Path(served.paths.prepared), tmp_path / "other")
    with pytest.raises(ArtifactError, match="come from different prepared data"):
        evaluate(other, {None: served.paths.index}, tmp_path / "report", include_slow=False)
    assert not (tmp_path / "report" / "metrics.json").exists()
