"""TensorFlow set-up in one place: thread caps, quiet logs, seeds.

Ray's CPU resources are bookkeeping, not limits: without a cap every TF process starts as many
threads as there are cores. The cap must be set before TF runs its first op; later calls
with a different value cannot change it, so they log a warning instead of raising.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)
_threads: int | None = None


def configure_tensorflow(cpu_threads: int, seed: int | None = None) -> int:
    """Cap TF intra/inter-op threads to ``cpu_threads`` and seed Python, NumPy and TF.

    Safe to call many times; returns the thread count actually in effect.
    """
    global _threads
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from mora_platform.models.tf_quiet import quiet_tensorflow

    quiet_tensorflow(import_now=True)  # TF's start-up chatter and Keras' refit "retracing" warnings
    import tensorflow as tf

    cpu_threads = max(1, int(cpu_threads))
    if _threads is None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
            _threads = cpu_threads
        except RuntimeError:
            _threads = tf.config.threading.get_intra_op_parallelism_threads() or cpu_threads
            logger.warning("TensorFlow already initialised; thread cap stays at %s", _threads)
    elif _threads != cpu_threads:
        logger.warning(
            "TensorFlow threads already capped at %s; ignoring request for %s", _threads, cpu_threads
        )
    if seed is not None:
        import keras

        keras.utils.set_random_seed(seed)
    return _threads


def cap_compute_threads(num_threads: int) -> None:
    """Keep TensorFlow / BLAS to the task's CPUs: Ray's resources are not limits.

    The environment variables cover BLAS and a TensorFlow not imported yet in this process;
    ``configure_tensorflow`` sets TF's thread pools (the first call in a process wins). Used by the
    fleet job's tasks and by Tune's trials alike.
    """
    threads = str(max(1, int(num_threads)))
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = threads
    os.environ["TF_NUM_INTEROP_THREADS"] = threads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configure_tensorflow(int(threads))


_CUSTOM_GRADIENT = "CustomGradient-"


def gradient_registry() -> dict[str, object] | None:
    """TensorFlow's global gradient registry (name -> entry) when TF is loaded and keeps one there."""
    import sys

    ops = sys.modules.get("tensorflow.python.framework.ops")
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def forget_custom_gradients(before: frozenset[str]) -> int:
    """Drop the ``CustomGradient-<uid>`` entries registered since ``before``; returns how many.

    Keras' TensorFlow optimizer sums gradients through ``tf.distribute``'s all-reduce, a
    ``tf.custom_gradient``: every trace of a train step registers its gradient function under a new
    name in TF's global gradient registry, which nothing unregisters and whose closures hold the traced
    graphs (about 16 MB and 23,000 Python objects per fit, measured by the backtest, whatever
    ``clear_session`` or ``gc.collect`` did). Once a fit's network is discarded they are garbage.
    The registry is private to TF: when a TF release drops it, this does nothing (a unit test says so).
    """
    registry = gradient_registry()
    if registry is None:
        return 0
    new = [name for name in registry if name.startswith(_CUSTOM_GRADIENT) and name not in before]
    for name in new:
        registry.pop(name, None)
    return len(new)


def custom_gradient_names() -> frozenset[str]:
    """The registry's names now (to hand to ``forget_custom_gradients`` after a fit)."""
    registry = gradient_registry()
    return frozenset(registry) if registry is not None else frozenset()
