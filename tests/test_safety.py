"""Safe loading: no code-executing artifact formats, and config paths that cannot destroy data."""

import re

import pytest

from recsys.config import load_config
from recsys.errors import ConfigError
from tests.conftest import ROOT

SOURCES = [p for d in ("recsys", "jobs", "bench", "scripts") for p in (ROOT / d).rglob("*.py")] + [ROOT / "train.py"]
UNSAFE = {
    r"\bimport pickle\b|\bpickle\.(load|dump)": "pickle",
    r"\bimport (dill|joblib|cloudpickle)\b": "a pickle-based serializer",
    r"allow_pickle\s*=\s*True": "np.load with allow_pickle=True",
    r"\byaml\.load\(": "yaml.load (use yaml.safe_load)",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"torch\.load\(": "torch.load",
}


def test_sources_use_no_code_executing_formats():
    assert len(SOURCES) > 20
    found = []
    for path in SOURCES:
        text = path.read_text()
        for pattern, what in UNSAFE.items():
            for m in re.finditer(pattern, text):
                found.append(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {what}")
    assert not found, found


def test_scanner_catches_what_it_looks_for(tmp_path):
    bad = "import pickle\nx = yaml.load(f)\nnp.load(p, allow_pickle=True)\neval('1')\n"
    hits = [what for pattern, what in UNSAFE.items() if re.search(pattern, bad)]
    assert len(hits) == 4


@pytest.mark.parametrize("override, words", [
    ("paths.prepared=data/raw/ml-100k", "paths.prepared .* is paths.raw"),
    ("paths.prepared=data", "paths.prepared .* contains paths.raw"),
    ("paths.index=runs/ml-100k/vectors", "is paths.index"),
    ("paths.model=runs", "paths.model .* contains paths.vectors"),
])
def test_output_paths_may_not_swallow_inputs_or_each_other(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(ROOT / "conf/ml-100k.yaml", [override])


def test_config_paths_are_absolute():
    cfg = load_config(ROOT / "conf/ml-100k.yaml", ["paths.model=~/m"])
    assert all(v.startswith("/") for v in cfg.to_dict()["paths"].values())
    assert not cfg.paths.model.startswith("~")
