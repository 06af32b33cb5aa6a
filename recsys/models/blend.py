"""What the rating network's autoencoders share: a part fitted after training, on rank 0, and
blended into the served vectors by a share that stays 0 until a fit chooses one."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


class FittedBlend(keras.layers.Layer):
    """A layer of fixed tables (``table``) and a scalar ``share`` of the served vectors, set by its
    own ``fit`` (0: the network alone). Its tables are weights, so they travel in the checkpoint
    and serving needs no data."""

    def __init__(self, name: str):
        super().__init__(name=name)
        self.share = self.table("share", ())

    def table(self, name: str, shape, dtype=tf.float32) -> tf.Variable:
        """A zero-filled weight the network's optimizer never steps (trainable=False): ``fit``
        trains or sets it apart."""
        return self.add_weight(name=name, shape=shape, dtype=dtype, initializer="zeros", trainable=False)

    @property
    def blends(self) -> bool:
        """False while the share is 0 (before ``fit``, or when no share helped): the blend's
        entries of the served vectors are then zeros, appended without computing them. True when
        not running eagerly (the value cannot be read while tracing)."""
        return not tf.executing_eagerly() or float(self.share.numpy()) != 0.0
