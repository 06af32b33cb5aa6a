"""Numeric precision and the accelerator in the training step: the mixed-precision policy,
float32 scores and losses, dynamic loss scaling through Horovod's gradient tape, XLA, and
input batches copied to the GPU ahead of the step.

Mixed precision (``train.mixed_precision: off | float16 | bfloat16``): variables stay float32
(the optimizer updates, checkpoints and exported vectors are float32); layers compute in
float16 or bfloat16. Everything after the towers (scores, logits, softmax, losses) is float32:
:func:`float32` casts the towers' outputs before they are combined. float16 has a narrow range
(largest 65,504; smallest normal 6.1e-5), so small gradients would flush to zero: the loss is
multiplied by a dynamic scale before the gradients are taken and the gradients divided by it
after (:class:`LossScale`). bfloat16 has float32's range and needs no scaling.

XLA (``train.xla``): :func:`compile_forward` compiles the forward pass and its gradient with
``jit_compile``; Horovod's allreduce ops stay outside the compiled function (XLA cannot compile
them), so XLA works at any number of ranks.

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

SETTINGS = ("off", "float16", "bfloat16")
# tf_keras policy for each train.mixed_precision setting
POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# the old boolean form of train.mixed_precision (true was float16, the GPU image's setting)
BOOLEAN_SETTINGS = {True: "float16", False: "off"}


def policy_name(setting: str) -> str:
    """The tf_keras policy name ("float32", "mixed_float16", "mixed_bfloat16") for a setting."""
    if isinstance(setting, bool):
        setting = BOOLEAN_SETTINGS[setting]
    if setting not in POLICIES:
        raise ValueError(f"train.mixed_precision must be one of {', '.join(SETTINGS)}; got {setting!r}")
    return POLICIES[setting]


@contextlib.contextmanager
def policy(setting: str):
    """Inside: tf_keras' global dtype policy for ``setting``; layers built inside keep it (variables
    float32, compute in the policy's dtype). The previous policy is restored on exit, so a process
    that trains and then exports (or runs tests) is left as it was."""
    from tf_keras import mixed_precision

    previous = mixed_precision.global_policy()
    mixed_precision.set_global_policy(policy_name(setting))
    try:
        yield
    finally:
        mixed_precision.set_global_policy(previous)


def float32_policy():
    """The float32 policy as a context: a model built inside computes in float32 whatever the
    process's global policy (export computes the vectors it writes this way)."""
    return policy("off")


def float32(tensors):
    """Every floating tensor of a tensor or a (nested) tuple/list/dict cast to float32; others as given."""
    import tensorflow as tf

    def cast(t):
        return tf.cast(t, tf.float32) if t.dtype.is_floating and t.dtype != tf.float32 else t

    return tf.nest.map_structure(cast, tensors)


def float32_sum(losses):
    """The sum of a list of scalar losses in float32 (layers' ``add_loss`` terms may be float16)."""
    import tensorflow as tf

    return tf.add_n([tf.cast(loss, tf.float32) for loss in losses])


def _values(grad):
    """The dense values of a gradient (an embedding's gradient is IndexedSlices)."""
    import tensorflow as tf

    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _divide(grad, scale):
    import tensorflow as tf

    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values / scale, grad.indices, grad.dense_shape)
    return grad / scale


class LossScale:
    """Dynamic loss scaling for float16 training, through Horovod's ``DistributedGradientTape``.

    :meth:`minimize` takes the gradients of ``scale * loss`` through the tape (Horovod averages the
    scaled gradients over the ranks), divides them by ``scale`` and applies them only when every
    one is finite. A step whose gradients overflow is skipped and the scale halved; after
    ``growth_steps`` finite steps in a row the scale doubles (at most ``max_scale``).

    Every rank takes the same decisions: they are made on the averaged gradients, which are
    identical on every rank (a rank whose own gradients overflow makes the average non-finite on
    all of them), and the scale starts equal everywhere (it is in the variables broadcast from
    rank 0 after the first step and in an elastic run's state). Without scaling (``dynamic`` is
    false: float32 and bfloat16) :meth:`minimize` is a plain gradient step.

    The scale is not checkpointed: a resumed run finds it again within a few skipped steps.
    """

    def __init__(self, dynamic: bool, initial: float = 2.0 ** 15, growth_steps: int = 2000,
                 factor: float = 2.0, max_scale: float = 2.0 ** 24):
        import tensorflow as tf

        self.dynamic = dynamic
        self.growth_steps, self.factor, self.max_scale = growth_steps, factor, max_scale
        self.scale = tf.Variable(initial if dynamic else 1.0, dtype=tf.float32, trainable=False, name="loss_scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="loss_scale_good_steps")
        self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="loss_scale_skipped_steps")

    @classmethod
    def for_setting(cls, setting: str, **kwargs) -> "LossScale":
        """Dynamic for float16, a plain step for off and bfloat16."""
        return cls(policy_name(setting) == "mixed_float16", **kwargs)

    @property
    def variables(self) -> list:
        """The scale's state: to broadcast from rank 0 and to keep in an elastic run's state."""
        return [self.scale, self.good_steps, self.skipped]

    def minimize(self, tape, loss, variables: list, optimizer):
        """One optimizer step on ``loss`` (a float32 scalar recorded by ``tape``); returns a bool
        tensor: whether the step was applied (always true without dynamic scaling).

        ``tape`` is a ``tf.GradientTape`` or Horovod's ``DistributedGradientTape`` around one.
        """
        import tensorflow as tf

        if not self.dynamic:
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return tf.constant(True)
        # d(scale * loss)/dw without recording the product: the scale enters as the output gradient
        grads = tape.gradient(loss, variables, output_gradients=tf.cast(self.scale, loss.dtype))
        grads = [_divide(g, self.scale) for g in grads]
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(_values(g))) for g in grads
                                         if g is not None]))

        def apply():
            optimizer.apply_gradients(zip(grads, variables))
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        self._update(finite)
        return applied

    def _update(self, finite) -> None:
        import tensorflow as tf

        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_steps)
        shrunk = tf.maximum(self.scale / self.factor, 1.0)
        grown = tf.minimum(self.scale * self.factor, self.max_scale)
        self.scale.assign(tf.where(finite, tf.where(grow, grown, self.scale), shrunk))
        self.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.good_steps + 1,
                                        tf.zeros_like(self.good_steps)))
        self.skipped.assign_add(tf.cast(tf.logical_not(finite), tf.int64))


def compile_forward(fn, xla: bool):
    """``fn`` compiled with XLA (``tf.function(jit_compile=True)``) when ``xla``; else ``fn`` itself
    (traced inline into the caller's ``tf.function``, as without this helper).

    Meant for the forward pass (model and loss) called under the gradient tape: TensorFlow
    compiles its gradient with XLA too, while the tape's Horovod allreduce, outside, is not
    compiled. ``fn`` must return every tensor the caller needs (``add_loss`` terms made inside
    cannot be read outside).
    """
    if not xla:
        return fn
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def static_batches(ds, examples: int):
    """``ds`` (batches of ``(features, rating)``) re-cut into batches of exactly ``examples``
    examples, the remainder dropped. Blocks of examples are not all full (a shard's last record
    holds fewer), and every new batch length would trace the step again (and, under XLA,
    compile it again). For the endless training input, where nothing is ever dropped."""
    return ds.rebatch(examples, drop_remainder=True)


def gpu_device() -> str | None:
    """The GPU this process trains on ("/GPU:0": each rank sees only its own GPU), or None on CPU."""
    import tensorflow as tf

    return "/GPU:0" if tf.config.list_logical_devices("GPU") else None


def prefetch_to_device(ds, device: str | None = None, buffer: int = 2):
    """``ds`` with its batches copied to ``device`` ahead of the step (default: this rank's GPU;
    unchanged on a machine without one), so the host-to-device copy overlaps the previous step.
    Must be the dataset's last transformation."""
    import tensorflow as tf

    device = device or gpu_device()
    if device is None:
        return ds
    return ds.apply(tf.data.experimental.prefetch_to_device(device, buffer_size=buffer))
