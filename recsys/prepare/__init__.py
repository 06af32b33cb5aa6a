"""The Spark prepare job: read, clean, encode, split and write MovieLens for training.

Stages (one module each): :mod:`.reading` (raw lines -> parsed rows, Spark),
:mod:`.cleaning` (a rejection reason per row), :mod:`.splitting` (train/test/cold),
:mod:`.tfrecords` (block-encoded ``tf.train.Example`` shards), :mod:`.job` (the whole run,
row accounting, manifest, atomic output).
"""
