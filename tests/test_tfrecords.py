"""The vectorized block encoder and the numpy feature lookup the prepare job writes with."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import DataError
from recsys.prepare.feature_table import FeatureTable
from recsys.prepare.tfrecords import encode_records, parse_blocks, serialize_block

FEATURES = [
    {"name": "user_id", "dtype": "int64", "shape": []},
    {"name": "genres", "dtype": "int64", "shape": [3]},
    {"name": "rating", "dtype": "float32", "shape": []},
]


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**40, n) >> rng.integers(0, 40, n)  # 1- to 6-byte varints
    ids[:6] = [0, 127, 128, 2**63 - 1, -1, -(2**63)][:n]  # edges, negatives take 10 bytes
    return {"user_id": ids, "genres": rng.integers(0, 300, (n, 3)),
            "rating": rng.standard_normal(n).astype(np.float32)}


@pytest.mark.parametrize("n,per_record", [(1, 4), (6, 4), (1000, 256), (513, 1)])
def test_vectorized_encoder_writes_the_reference_messages(n, per_record):
    import tensorflow as tf

    cols = _columns(n)
    ours = encode_records(cols, FEATURES, per_record)
    ref = [serialize_block({k: v[s:s + per_record] for k, v in cols.items()}, FEATURES)
           for s in range(0, n, per_record)]
    assert len(ours) == len(ref) == -(-n // per_record)
    for a, b in zip(ours, ref):
        assert tf.train.Example.FromString(a) == tf.train.Example.FromString(b)
    back = {k: v.numpy() for k, v in parse_blocks(tf.constant(ours), FEATURES).items()}
    for k, v in cols.items():
        np.testing.assert_array_equal(back[k], v)


def test_encoder_is_deterministic():
    cols = _columns(300, seed=3)
    assert encode_records(cols, FEATURES, 64) == encode_records({k: v.copy() for k, v in cols.items()}, FEATURES, 64)


def test_feature_table_looks_up_by_raw_id_and_refuses_unknown_ids():
    table = FeatureTable("movies", np.array([30, 10, 20]),
                         {"movie_id": np.array([4, 2, 3]), "genres": np.array([[7, 0], [5, 6], [8, 0]])})
    got = table.lookup(np.array([10, 30, 30, 20]))
    np.testing.assert_array_equal(got["movie_id"], [2, 4, 4, 3])
    np.testing.assert_array_equal(got["genres"], [[5, 6], [7, 0], [7, 0], [8, 0]])
    with pytest.raises(DataError, match="movie id 25 has a rating but no encoded row"):
        table.lookup(np.array([10, 25]))
    with pytest.raises(DataError, match="movie id 99"):
        table.lookup(np.array([99]))
    with pytest.raises(DataError, match="repeated raw id"):
        FeatureTable("users", np.array([1, 1]), {"user_id": np.array([2, 3])})
