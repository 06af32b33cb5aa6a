import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import Config, load_config
from recsys.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load_and_differ_only_where_they_say():
    base = load_config(ROOT / "conf/default.yaml")
    ml = load_config(ROOT / "conf/ml-100k.yaml")
    big = load_config(ROOT / "conf/synth-25m.yaml")
    assert isinstance(ml, Config)
    assert ml.prepare.split.test_fraction == 0.2 and ml.prepare.split.strategy == "random"
    assert big.synth.ratings == 25_000_000 and big.data.format == "ml-1m"
    assert big.prepare.shards.train == 32 and base.prepare.shards.train == 8
    # inherited untouched
    assert big.prepare.features.age_buckets == [1, 18, 25, 35, 45, 50, 56]


def test_defaults_in_yaml_equal_defaults_in_code():
    # conf/default.yaml documents every knob; it must not drift from the dataclass defaults
    loaded = load_config(ROOT / "conf/default.yaml").to_dict()
    code = Config().to_dict()
    # paths are made absolute at load time (against the working directory)
    code["paths"] = {k: os.path.abspath(v) for k, v in code["paths"].items()}
    assert loaded == code


def test_paths_are_absolute_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "conf/ml-100k.yaml", ["paths.model=~/m", "paths.raw=in/raw"])
    assert cfg.paths.raw == str(tmp_path / "in/raw")
    assert cfg.paths.model == os.path.expanduser("~/m")
    assert all(os.path.isabs(p) for p in cfg.paths.__dict__.values())
    with pytest.raises(ConfigError, match="paths.vectors is empty"):
        load_config(ROOT / "conf/ml-100k.yaml", ["paths.vectors=' '"])


def test_overrides_are_typed_and_nested():
    cfg = load_config(ROOT / "conf/ml-100k.yaml", ["prepare.shards.train=4", "prepare.split.strategy=temporal",
                                                   "data.rating_max=10"])
    assert cfg.prepare.shards.train == 4
    assert cfg.prepare.split.strategy == "temporal"
    assert cfg.data.rating_max == 10.0 and isinstance(cfg.data.rating_max, float)


@pytest.mark.parametrize("override, fragment", [
    ("prepare.shardz.train=4", "unknown key 'prepare.shardz'"),
    ("prepare.shards.train=four", "key 'prepare.shards.train' must be an integer"),
    ("prepare.split.strategy=magic", "key 'prepare.split.strategy' must be one of random, user_stratified, temporal"),
    ("prepare.split.test_fraction=1.5", "prepare.split.test_fraction"),
    ("prepare.features.age_buckets=[5, 1]", "strictly increasing"),
    ("noequals", "expected KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "conf/ml-100k.yaml", [override])
    assert fragment in str(err.value)
    if "=" in override:
        assert "conf/ml-100k.yaml" in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: %s\nprepare:\n  split:\n    test_fractoin: 0.1\n" % (ROOT / "conf/default.yaml"))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "prepare.split.test_fractoin" in msg and "test_fraction" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("paths: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    cyc = tmp_path / "cyc.yaml"
    cyc.write_text("extends: cyc.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(cyc)


def test_cli_config_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "config", "--config", "conf/ml-100k.yaml",
                           "--set", "prepare.shards.train=x"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: conf/ml-100k.yaml")
    assert "Traceback" not in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "recsys.cli", "config", "--set", "prepare.shards.train=3"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "train: 3" in ok.stdout


def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as text; it must still be the number an engineer meant
    conf = tmp_path / "sci.yaml"
    conf.write_text(f"extends: {ROOT / 'conf/default.yaml'}\ntrain:\n  learning_rate: 1e-3\nmodel:\n  l2: 1E-5\n")
    cfg = load_config(conf, ["model.embedding_l2=3e-4", "model.dropout=+2.5e-1"])
    assert (cfg.train.learning_rate, cfg.model.l2, cfg.model.embedding_l2, cfg.model.dropout) == (1e-3, 1e-5, 3e-4, 0.25)
    with pytest.raises(ConfigError, match="'train.learning_rate' must be a number, got '1e-3x'"):
        load_config(conf, ["train.learning_rate=1e-3x"])
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer"):
        load_config(conf, ["train.epochs=1e3"])  # an integer key stays an integer


@pytest.mark.parametrize("override,key", [
    ("train.early_stopping_patience=-1", "train.early_stopping_patience"),
    ("model.retrieval_weight=-1", "model.retrieval_weight"),
    ("model.retrieval_popularity=-0.1", "model.retrieval_popularity"),
    ("model.retrieval_popularity_grid=[0,-1]", "model.retrieval_popularity_grid"),
    ("model.retrieval_temperature=0", "model.retrieval_temperature"),
    ("synth.noise=0", "synth.noise"),
    ("model.retrieval_group_size=0", "model.retrieval_group_size"),
    ("model.retrieval_catalog_max=0", "model.retrieval_catalog_max"),
    ("train.finite_check_steps=0", "train.finite_check_steps"),
    ("train.warmup_epochs=-2", "train.warmup_epochs"),
    ("prepare.min_ratings_per_user=-5", "prepare.min_ratings_per_user"),
    ("prepare.min_ratings_per_movie=-1", "prepare.min_ratings_per_movie"),
    ("index.flat_max=-1", "index.flat_max"),
    ("prepare.master=", "prepare.master"),
    ("prepare.master=' '", "prepare.master"),
    ("index.approximate=IVFbogus", "index.approximate"),
    ("index.approximate=PQ7", "index.approximate"),  # 32/33-dim vectors: not a multiple of 7
    ("index.approximate=", "index.approximate"),
    ("export.foldin_weight=-0.5", "export.foldin_weight"),
    ("export.foldin_weight=.nan", "export.foldin_weight"),
    ("export.foldin_ridge=0", "export"),
    ("export.foldin_unobserved_weight=.inf", "export"),
])
def test_nonsense_values_are_one_error_line_at_config_time(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(ROOT / "conf/ml-100k.yaml", [override])
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "config", "--config", str(ROOT / "conf/ml-100k.yaml"),
                           "--set", override], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr


def test_catalog_negatives_need_the_retrieval_loss():
    """Catalog negatives would be ignored without the retrieval loss: that stops at config time."""
    load_config(ROOT / "conf/ml-100k.yaml", ["model.retrieval_negatives=catalog"])  # alone: fine
    with pytest.raises(ConfigError, match="key 'model.retrieval_negatives'.*model.retrieval_weight"):
        load_config(ROOT / "conf/ml-100k.yaml", ["model.retrieval_negatives=catalog", "model.retrieval_weight=0"])


def test_fism_options_need_what_they_change():
    """``model.history_retrieval`` pools the user's history and ``model.history_tied`` ties that term's
    table: each would be silently ignored without the other's prerequisite, so it stops at config time."""
    fism = ["model.user_history_length=5", "model.history_retrieval=true"]
    load_config(ROOT / "conf/ml-100k.yaml", [*fism, "model.history_tied=true"])  # together: fine
    with pytest.raises(ConfigError, match="key 'model.history_retrieval'.*model.user_history_length above 0"):
        load_config(ROOT / "conf/ml-100k.yaml", ["model.history_retrieval=true"])
    with pytest.raises(ConfigError, match="key 'model.history_tied'.*needs model.history_retrieval"):
        load_config(ROOT / "conf/ml-100k.yaml", ["model.user_history_length=5", "model.history_tied=true"])


def test_item_autoencoder_settings_are_checked_at_config_time():
    """A share outside (0, 1] or an empty grid would serve a rating outside the blend, so each stops
    naming its key. The block is the rating network's, as ``model.bpr`` is BPR-MF's: another kind
    trained from conf/ml-100k.yaml (which turns the autoencoder on) leaves it aside."""
    assert load_config(ROOT / "conf/ml-100k.yaml").model.autoencoder.units == 500
    for kind in ("bpr", "neumf", "sequential", "lightgcn"):  # README: --set model.kind=KIND on the demo config
        load_config(ROOT / "conf/ml-100k.yaml", [f"model.kind={kind}"])  # raises if the block refused other kinds
    for grid in ("[]", "[0.5,1.5]", "[0]"):
        with pytest.raises(ConfigError, match="key 'model.autoencoder.share_grid'.*shares in \\(0, 1\\]"):
            load_config(ROOT / "conf/ml-100k.yaml", [f"model.autoencoder.share_grid={grid}"])
    with pytest.raises(ConfigError, match="key 'model.autoencoder'.*raters"):
        load_config(ROOT / "conf/ml-100k.yaml", ["model.autoencoder.raters=0"])


def test_history_autoencoder_settings_are_checked_at_config_time():
    """A share of 0 or below, an empty grid or a dropout of 1 would serve or train nothing useful,
    so each stops naming its key; other kinds leave the block aside."""
    assert load_config(ROOT / "conf/ml-100k.yaml").model.history_autoencoder.units == 200
    assert load_config(ROOT / "conf/default.yaml").model.history_autoencoder.units == 0
    for kind in ("bpr", "neumf", "sequential", "lightgcn"):
        load_config(ROOT / "conf/ml-100k.yaml", [f"model.kind={kind}"])
    for grid in ("[]", "[0]", "[1,-0.5]"):
        with pytest.raises(ConfigError, match="key 'model.history_autoencoder.share_grid'.*positive shares"):
            load_config(ROOT / "conf/ml-100k.yaml", [f"model.history_autoencoder.share_grid={grid}"])
    with pytest.raises(ConfigError, match="key 'model.history_autoencoder.dropout'.*\\[0, 1\\)"):
        load_config(ROOT / "conf/ml-100k.yaml", ["model.history_autoencoder.dropout=1"])
    with pytest.raises(ConfigError, match="key 'model.history_autoencoder.users_per_step' must be at least 1"):
        load_config(ROOT / "conf/ml-100k.yaml", ["model.history_autoencoder.users_per_step=0"])


def test_index_that_needs_more_vectors_than_the_catalog_is_one_line():
    import numpy as np

    from recsys.errors import ArtifactError
    from recsys.indexing import build_index

    v = np.random.default_rng(0).random((500, 33), dtype=np.float32)
    with pytest.raises(ArtifactError, match=r"'IVF1024,Flat' has 1,024 IVF lists but the collection has only 500 "
                                            r"vectors.*IVF12 or fewer.*index.flat_max"):
        build_index(v, v, flat_max=100, factory="IVF1024,Flat", target_recall=0.9, k=10, sample=50)
    assert build_index(v, v, flat_max=100, factory="IVF8,Flat", target_recall=0.9, k=10, sample=50).recall >= 0.9


def test_faiss_factory_is_checked_at_the_widths_the_model_serves():
    """The widths come from the model's own vectors: the rating network without the retrieval loss
    serves 34- and 32-wide vectors (PQ2 builds both), BPR-MF 65 and 64 (PQ2 cannot build 65)."""
    load_config(ROOT / "conf/default.yaml", ["model.retrieval_weight=0", "index.approximate=PQ2"])
    with pytest.raises(ConfigError, match=r"builds 65-dimensional vectors"):
        load_config(ROOT / "conf/default.yaml", ["model.kind=bpr", "index.approximate=PQ2"])


def test_popularity_grid_needs_the_retrieval_score():
    """The grid tunes a term of the retrieval score: without the retrieval loss it stops at config time."""
    load_config(ROOT / "conf/default.yaml", ["model.retrieval_popularity_grid=[0,0.4]"])  # alone: fine
    with pytest.raises(ConfigError, match=r"key 'model.retrieval_popularity_grid'.*retrieval_weight"):
        load_config(ROOT / "conf/default.yaml", ["model.retrieval_popularity_grid=[0,0.4]", "model.retrieval_weight=0"])
