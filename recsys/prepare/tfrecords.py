"""TFRecord shards of block-encoded ``tf.train.Example`` records.

A record holds up to ``examples_per_record`` consecutive examples (a "block"): each
feature is one flat list holding the block's values back to back (a scalar feature gives
``n`` values, a list feature of length ``L`` gives ``n * L``). Building one protobuf per
block instead of per example makes the Python writer about 12x faster (bench/ and
docs/benchmarks.md); ``examples_per_record: 1`` gives classic one-example records, read by
the same code. :func:`parse_blocks` turns a batch of serialized records into per-example
tensors of the shapes the feature spec states.
"""

from __future__ import annotations

import os

import numpy as np

SHARD_SCHEMA = "split string, shard int, path string, records long, examples long, sha256 string"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.tfrecord"


def serialize_block(columns: dict[str, np.ndarray], spec_features: list[dict]) -> bytes:
    """One ``tf.train.Example`` for a block of ``n`` examples (arrays of shape [n] or [n, L])."""
    import tensorflow as tf

    feats = {}
    for f in spec_features:
        values = columns[f["name"]].reshape(-1)
        if f["dtype"] == "float32":
            feats[f["name"]] = tf.train.Feature(float_list=tf.train.FloatList(value=values.astype(np.float32)))
        else:
            feats[f["name"]] = tf.train.Feature(int64_list=tf.train.Int64List(value=values.astype(np.int64)))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def shard_writer(split: str, out_dir: str, spec_features: list[dict], examples_per_record: int):
    """A ``mapInArrow`` function writing its partition to ``out_dir/split/part-<partition>``."""

    def write(batches):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import pyarrow as pa
        import tensorflow as tf
        from pyspark import TaskContext

        index = TaskContext.get().partitionId()
        path = os.path.join(out_dir, split, shard_name(index))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        records = examples = 0
        pending: dict[str, list[np.ndarray]] = {f["name"]: [] for f in spec_features}
        pending_n = 0

        def flush(writer, cols, n):
            nonlocal records, examples
            for start in range(0, n, examples_per_record):
                block = {k: v[start:start + examples_per_record] for k, v in cols.items()}
                writer.write(serialize_block(block, spec_features))
                records += 1
            examples += n

        with tf.io.TFRecordWriter(path) as writer:
            for batch in batches:
                for f in spec_features:
                    col = batch.column(f["name"])
                    if f["shape"]:
                        arr = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), *f["shape"])
                    else:
                        arr = col.to_numpy(zero_copy_only=False)
                    pending[f["name"]].append(arr)
                pending_n += batch.num_rows
                # write whole blocks now, keep the remainder for the next batch
                full = pending_n // examples_per_record * examples_per_record
                if full:
                    cols = {k: np.concatenate(v) for k, v in pending.items()}
                    flush(writer, {k: v[:full] for k, v in cols.items()}, full)
                    pending = {k: [v[full:]] for k, v in cols.items()}
                    pending_n -= full
            if pending_n:
                cols = {k: np.concatenate(v) for k, v in pending.items()}
                flush(writer, cols, pending_n)
        from recsys.checksums import sha256_file

        digest = sha256_file(path)
        yield pa.RecordBatch.from_pylist(
            [{"split": split, "shard": index, "path": f"{split}/{shard_name(index)}", "records": records,
              "examples": examples, "sha256": digest}],
            schema=pa.schema([("split", pa.string()), ("shard", pa.int32()), ("path", pa.string()),
                              ("records", pa.int64()), ("examples", pa.int64()), ("sha256", pa.string())]),
        )

    return write


def parse_blocks(serialized, spec_features: list[dict]):
    """Parse a batch of block records (a string tensor [R]) into per-example tensors.

    Returns a dict ``name -> Tensor`` of shape ``[N] + shape`` where N is the number of
    examples in the R records (int64 or float32, as the spec says).
    """
    import tensorflow as tf

    schema = {f["name"]: tf.io.RaggedFeature(tf.float32 if f["dtype"] == "float32" else tf.int64)
              for f in spec_features}
    parsed = tf.io.parse_example(serialized, schema)
    out = {}
    for f in spec_features:
        flat = parsed[f["name"]].flat_values
        out[f["name"]] = tf.reshape(flat, [-1, *f["shape"]]) if f["shape"] else flat
    return out


def read_shards(paths: list[str], spec_features: list[dict], batch_records: int = 256) -> dict[str, np.ndarray]:
    """Every example of the given shard files as numpy arrays (for checks and evaluation)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(paths).batch(batch_records).map(lambda s: parse_blocks(s, spec_features))
    parts: dict[str, list[np.ndarray]] = {f["name"]: [] for f in spec_features}
    for batch in ds.as_numpy_iterator():
        for k, v in batch.items():
            parts[k].append(v)
    return {k: (np.concatenate(v) if v else np.zeros((0, *f["shape"]))) for (k, v), f in zip(parts.items(), spec_features)}
