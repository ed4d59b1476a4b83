"""Keras layers of fmnist's own, registered with Keras under the package name "fmnist".

A saved model that uses them loads on any backend once this module is
imported (`runs.load_model` does). Importing it imports Keras, so the backend
must be chosen first (`models.select_backend`).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fmnist")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, computed in training by TensorFlow's fused kernel.

    Keras 3 normalises with generic operations (moments, then a scale and a
    shift) that make a small CNN's training step 2-3x slower on CPU than its
    convolutions alone; TensorFlow's fused kernel (oneDNN on CPU) does the same
    arithmetic in one pass. The variables, the inference path and the saved
    file are plain BatchNormalization's, so a model trained on TensorFlow loads
    and predicts the same on JAX, where this layer is Keras's own.
    """

    def call(self, inputs, training=None, mask=None):
        if not (self._fusable(inputs) and training and self.trainable and mask is None):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma,  # float32 variables, also under a bfloat16 policy
            self.beta,
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased batch variance; Keras averages the biased one.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / count
        # The moving averages, updated as Keras updates them: m * moving + (1 - m) * batch.
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        return outputs

    def _fusable(self, inputs) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.center
            and self.scale
            and not self.synchronized
            and not getattr(self, "renorm", False)  # an option of newer Keras versions only
        )


@keras.saving.register_keras_serializable(package="fmnist")
class Mirror(keras.layers.Layer):
    """Mirror images left to right: (n, height, width) -> the same shape, column order reversed."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="fmnist")
class Shift(keras.layers.Layer):
    """Translate images by (dy, dx) pixels, down and right for positive values, filling with black."""

    def __init__(self, dy: int = 0, dx: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dy, self.dx = int(dy), int(dx)

    def call(self, inputs):
        pad = max(abs(self.dy), abs(self.dx))
        height, width = inputs.shape[1], inputs.shape[2]
        padded = keras.ops.pad(inputs, ((0, 0), (pad, pad), (pad, pad)))
        top, left = pad - self.dy, pad - self.dx
        return padded[:, top : top + height, left : left + width]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}
