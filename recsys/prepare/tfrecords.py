"""TFRecord shards of block-encoded ``tf.train.Example`` records.

A record holds up to ``examples_per_record`` consecutive examples (a "block"): each
feature is one flat list holding the block's values back to back (a scalar feature gives
``n`` values, a list feature of length ``L`` gives ``n * L``). Building one protobuf per
block instead of per example makes the Python writer over 25x faster, and the job builds
the records' wire format with numpy (:func:`encode_records`) rather than protobuf objects
(bench/bench_prepare.py --encoders, docs/benchmarks.md); ``examples_per_record: 1`` gives
classic one-example records, read by the same code. :func:`parse_blocks` turns a batch of
serialized records into per-example tensors of the shapes the feature spec states.
"""

from __future__ import annotations

import os

import numpy as np

SHARD_SCHEMA = ("split string, shard int, path string, records long, examples long, sha256 string, "
                "table string, table_sha256 string")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.tfrecord"


def serialize_block(columns: dict[str, np.ndarray], spec_features: list[dict]) -> bytes:
    """One ``tf.train.Example`` for a block of ``n`` examples (arrays of shape [n] or [n, L]).

    The reference encoder (TensorFlow's protobuf classes); the job writes with
    :func:`encode_records`, which produces the same messages without building them.
    """
    import tensorflow as tf

    feats = {}
    for f in spec_features:
        values = columns[f["name"]].reshape(-1)
        if f["dtype"] == "float32":
            feats[f["name"]] = tf.train.Feature(float_list=tf.train.FloatList(value=values.astype(np.float32).tolist()))
        else:
            feats[f["name"]] = tf.train.Feature(int64_list=tf.train.Int64List(value=values.astype(np.int64).tolist()))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


# ---------------------------------------------------------------- vectorized encoder
# A block record is an Example whose Features map has one entry per feature, each holding
# a packed Int64List (varints) or FloatList (little-endian float32). The varints of a whole
# batch are computed with numpy at once; a record is then a few byte slices and headers.
# Wire format: https://protobuf.dev/programming-guides/encoding/ (tag = field << 3 | type 2).
_SHIFTS = [np.uint64(7 * k) for k in range(10)]


def _varint(value: int) -> bytes:
    """Protobuf varint of one non-negative length."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of int64 values back to back (negatives as 10-byte two's complement, as
    protobuf writes int64), and each value's byte count: (uint8 [B], int64 [N])."""
    v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1).view(np.uint64)
    sizes = np.ones(v.shape, np.int64)
    for shift in _SHIFTS[1:]:
        longer = v >= (np.uint64(1) << shift)
        if not longer.any():
            break
        sizes += longer
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), np.uint8)
    todo = np.arange(len(v))
    k = 0
    while len(todo):  # byte k of every value that has one
        byte = ((v[todo] >> _SHIFTS[k]) & np.uint64(0x7F)).astype(np.uint8)
        more = sizes[todo] > k + 1
        byte[more] |= 0x80
        out[starts[todo] + k] = byte
        todo = todo[more]
        k += 1
    return out, sizes


def encode_records(columns: dict[str, np.ndarray], spec_features: list[dict], examples_per_record: int) -> list[bytes]:
    """Serialized block records for ``n`` examples: the first ``examples_per_record`` in the
    first record, and so on (the last may be shorter). Same messages as :func:`serialize_block`.

    Args:
        columns: feature name -> array [n] or [n, L] (the spec's shape).
    """
    n = len(columns[spec_features[0]["name"]])
    bounds = list(range(0, n, examples_per_record)) + [n]
    parts = []
    for f in spec_features:
        key = f["name"].encode()
        entry_head = b"\x0a" + _varint(len(key)) + key + b"\x12"  # map entry: key (1), value (2)
        width = int(np.prod(f["shape"])) if f["shape"] else 1
        if f["dtype"] == "float32":
            data = np.ascontiguousarray(columns[f["name"]], dtype="<f4").tobytes()
            offsets = [b * width * 4 for b in bounds]
            kind = b"\x12"  # Feature.float_list
        else:
            raw, sizes = _varints(columns[f["name"]])
            data = raw.tobytes()
            per_example = sizes.reshape(n, width).sum(axis=1) if width > 1 else sizes
            offsets = np.concatenate([[0], np.cumsum(per_example)])[bounds].tolist()
            kind = b"\x1a"  # Feature.int64_list
        parts.append((entry_head, kind, data, offsets))
    records = []
    for i in range(len(bounds) - 1):
        entries = []
        for entry_head, kind, data, offsets in parts:
            packed = data[offsets[i]:offsets[i + 1]]
            values = b"\x0a" + _varint(len(packed)) + packed
            feature = kind + _varint(len(values)) + values
            entry = entry_head + _varint(len(feature)) + feature
            entries.append(b"\x0a" + _varint(len(entry)) + entry)
        body = b"".join(entries)
        records.append(b"\x0a" + _varint(len(body)) + body)
    return records


def shard_writer(split: str, out_dir: str, spec_features: list[dict], examples_per_record: int,
                 users, movies):
    """A ``mapInArrow`` function writing its partition as one TFRecord shard and one Parquet part.

    Input batches hold raw ``user_id``, ``movie_id``, ``rating``, ``timestamp`` in the
    order to write; the encoded features come from the ``users`` / ``movies``
    :class:`~recsys.prepare.feature_table.FeatureTable`. Writes
    ``out_dir/split/part-<partition>.tfrecord`` and ``out_dir/ratings_<split>/part-<partition>.parquet``
    (original ids, rating, timestamp, encoded ids); yields one row of :data:`SHARD_SCHEMA`.
    """

    def write(batches):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import pyarrow as pa
        import pyarrow.parquet as pq
        import tensorflow as tf
        from pyspark import TaskContext

        from recsys.checksums import sha256_file
        from recsys.prepare.reading import arrow_schema

        index = TaskContext.get().partitionId()
        path = os.path.join(out_dir, split, shard_name(index))
        table_path = os.path.join(out_dir, f"ratings_{split}", f"part-{index:05d}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.makedirs(os.path.dirname(table_path), exist_ok=True)
        records = examples = 0
        pending: dict[str, list[np.ndarray]] = {f["name"]: [] for f in spec_features}
        pending_n = 0
        schema = pa.schema([("user_id", pa.int64()), ("movie_id", pa.int64()), ("rating", pa.float32()),
                            ("timestamp", pa.int64()), ("user_idx", pa.int64()), ("movie_idx", pa.int64())])

        def flush(writer, cols, n):
            nonlocal records, examples
            for record in encode_records(cols, spec_features, examples_per_record):
                writer.write(record)
                records += 1
            examples += n

        with tf.io.TFRecordWriter(path) as writer, pq.ParquetWriter(table_path, schema) as table_writer:
            for batch in batches:
                raw_user = batch.column("user_id").to_numpy()
                raw_movie = batch.column("movie_id").to_numpy()
                rating = batch.column("rating").to_numpy().astype(np.float32)
                cols = {**users.lookup(raw_user), **movies.lookup(raw_movie), "rating": rating}
                table_writer.write_table(pa.table(
                    [raw_user, raw_movie, rating, batch.column("timestamp").to_numpy(), cols["user_id"],
                     cols["movie_id"]], schema=schema))
                for f in spec_features:
                    pending[f["name"]].append(cols[f["name"]])
                pending_n += batch.num_rows
                # write whole blocks now, keep the remainder for the next batch
                full = pending_n // examples_per_record * examples_per_record
                if full:
                    cols = {k: np.concatenate(v) for k, v in pending.items()}
                    flush(writer, {k: v[:full] for k, v in cols.items()}, full)
                    pending = {k: [v[full:]] for k, v in cols.items()}
                    pending_n -= full
            if pending_n:
                flush(writer, {k: np.concatenate(v) for k, v in pending.items()}, pending_n)
        yield pa.RecordBatch.from_pylist(
            [{"split": split, "shard": index, "path": f"{split}/{shard_name(index)}", "records": records,
              "examples": examples, "sha256": sha256_file(path),
              "table": f"ratings_{split}/part-{index:05d}.parquet", "table_sha256": sha256_file(table_path)}],
            schema=arrow_schema(SHARD_SCHEMA),
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

    parse = tf.autograph.experimental.do_not_convert(lambda s: parse_blocks(s, spec_features))  # plain TF ops
    ds = tf.data.TFRecordDataset(paths).batch(batch_records).map(parse)
    parts: dict[str, list[np.ndarray]] = {f["name"]: [] for f in spec_features}
    for batch in ds.as_numpy_iterator():
        for k, v in batch.items():
            parts[k].append(v)
    return {k: (np.concatenate(v) if v else np.zeros((0, *f["shape"]))) for (k, v), f in zip(parts.items(), spec_features)}
