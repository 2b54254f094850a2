"""TensorFlow's import, quiet: for every module that needs TensorFlow, below all of them."""

from __future__ import annotations

import os

__all__ = [
    "import_tensorflow_quietly",
]


def import_tensorflow_quietly(threads: int | None, gpu_memory_mb: int | None = None) -> int:
    """Import TensorFlow with its C++ start-up chatter (CUDA probes, CPU flags) silenced;
    return how many GPUs it sees.

    `threads`: the cores this worker may use, when several share the machine; TensorFlow
    would otherwise give each worker a thread pool as large as the machine.
    `gpu_memory_mb`: this worker's share of a GPU other workers use too, as a memory limit;
    None: memory growth (TensorFlow would otherwise reserve nearly all of each GPU at once).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel("ERROR")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if gpu_memory_mb:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)]
            )
        else:
            tf.config.experimental.set_memory_growth(gpu, True)
    return len(gpus)
