"""The index interface builds any FAISS factory string: tuned where it has a search parameter,
its recall measured against exact search either way (no FAISS traceback)."""

import numpy as np
import pytest

from recsys.indexing import build_index, exact_topk, recall_at_k


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16)).astype(np.float32)
    base = (centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    queries = rng.normal(size=(400, 16)).astype(np.float32)
    return base, queries


@pytest.mark.parametrize("factory, param", [("HNSW16", "efSearch"), ("IVF16,Flat", "nprobe"), ("SQ8", None),
                                            ("PQ4", None), ("IVF16,SQ8", "nprobe"),
                                            ("IVF16_HNSW8,Flat", "nprobe")])
def test_any_factory_string_builds_and_records_its_recall(clustered, factory, param, capsys):
    base, queries = clustered
    built = build_index(base, queries, flat_max=100, factory=factory, target_recall=0.9, k=10, sample=200)
    assert list(built.search_param) == ([param] if param else [])
    if param == "nprobe":
        assert built.search_param["nprobe"] <= 16  # never more probes than lists
        assert built.recall >= 0.9  # probing every list is exact, so the target is always reachable
    # the recorded recall is what the index gives on the tuning sample, as an exact search would tell
    truth = exact_topk(base, queries, 10)
    found = built.index.search(queries, 10)[1]
    measured = recall_at_k(found, truth)
    assert 0.0 < built.recall <= 1.0 and abs(measured - built.recall) < 0.1
    err = capsys.readouterr().err
    assert (built.recall < 0.9) == ("below index.target_recall" in err)
