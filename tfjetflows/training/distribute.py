"""Training on TensorFlow's own distributed engine, ``tf.distribute``.

The config's ``distribute.strategy`` picks the strategy (:func:`strategy_kind`):

- ``one_device``: TensorFlow's default strategy (one device: the first GPU, else the CPU), the
  plain Keras path;
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every GPU of this machine (every logical
  CPU device when there is no GPU, which is how the tests run it on CPU);
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``, the cluster described by the
  standard ``TF_CONFIG`` environment variable (see README.md for a SLURM script);
- ``auto`` (default): ``multi_worker`` when ``TF_CONFIG`` names more than one worker, else
  ``mirrored`` when more than one GPU is visible, else ``one_device``.

What makes a distributed run equal to a one-device run with the same global batch
(``data.batch_size``, split evenly across the replicas, so it must be a multiple of their number):

- model, optimizer, metrics and checkpoint restore are created under ``strategy.scope()``;
- the loss (:meth:`tfjetflows.flows.density.DensityModel.compute_loss`) has the gradient of the
  mean over the global batch, whatever the split;
- gradient clipping (``training.clipnorm``) clips the global gradient
  (:func:`clip_global_gradient`), not each replica's share as Keras would;
- batch norm is synchronised (:meth:`tfjetflows.flows.batchnorm.BatchNormLayer.batch_moments`):
  every replica normalises with the global batch's statistics;
- input: the datasets are ``tf.data.Dataset.from_generator`` over Parquet, which ``tf.data``
  cannot shard by file, so :func:`dataset_options` sets ``AutoShardPolicy.DATA``: every worker
  runs the whole (deterministic) pipeline and keeps its share of each global batch. That keeps
  the batches exactly those of a one-device run, at the price of every worker reading and
  encoding all the jets;
- multi-worker: only the chief (``TF_CONFIG`` task ``chief``, or ``worker`` 0 without one)
  writes the run folder and checkpoints; it alone reads the checkpoint on ``--resume`` and
  :func:`broadcast_from_chief` sends its weights, optimizer state and epoch to the others, so a
  restarted worker rejoins from the chief's last checkpoint without seeing its files.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tfjetflows.config import Config, ConfigError

__all__ = [
    "STRATEGIES",
    "ClusterRole",
    "broadcast_from_chief",
    "check_global_batch",
    "chief_values",
    "clip_global_gradient",
    "cluster_role",
    "dataset_options",
    "describe_strategy",
    "make_strategy",
    "num_workers",
    "strategy_kind",
    "training_role",
]

log = logging.getLogger("tfjetflows.training")

#: The values of ``distribute.strategy``.
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in a ``TF_CONFIG`` cluster.

    Attributes:
        task_type: ``"chief"``, ``"worker"`` (or another TF_CONFIG type); ``""`` without
            ``TF_CONFIG``.
        task_index: the index within ``task_type``.
        workers: how many training tasks (``chief`` plus ``worker``) the cluster has; 1 without
            ``TF_CONFIG``.
        has_chief: whether the cluster names a ``chief`` task.
    """

    task_type: str = ""
    task_index: int = 0
    workers: int = 1
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run: the ``chief``, or ``worker`` 0 if there is none."""
        if not self.task_type or self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief

    @property
    def name(self) -> str:
        """``worker-1``-style name of the task (``local`` without ``TF_CONFIG``)."""
        return f"{self.task_type}-{self.task_index}" if self.task_type else "local"


def cluster_role(environ: Mapping[str, str] | None = None) -> ClusterRole:
    """Read this process's role from ``TF_CONFIG`` (no TensorFlow needed).

    Args:
        environ: the environment (default ``os.environ``).

    Returns:
        The :class:`ClusterRole`; the local default when ``TF_CONFIG`` is unset or empty.

    Raises:
        ConfigError: ``TF_CONFIG`` is not JSON of the documented shape.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return ClusterRole()
    try:
        spec = json.loads(raw)
        cluster = spec.get("cluster", {}) or {}
        task = spec.get("task", {}) or {}
        task_type = str(task.get("type", ""))
        task_index = int(task.get("index", 0))
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, TypeError, AttributeError) as err:
        raise ConfigError(
            f'TF_CONFIG: expected JSON like {{"cluster": {{"worker": ["host:port", ...]}}, '
            f'"task": {{"type": "worker", "index": 0}}}} ({err})'
        ) from None
    if workers and task_type not in cluster:
        raise ConfigError(f"TF_CONFIG: task type {task_type!r} is not in the cluster")
    return ClusterRole(
        task_type=task_type,
        task_index=task_index,
        workers=max(workers, 1),
        has_chief=bool(cluster.get("chief")),
    )


def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))  # does not initialise the runtime


def strategy_kind(
    config: Config, *, role: ClusterRole | None = None, gpus: int | None = None
) -> str:
    """Resolve ``distribute.strategy`` to ``one_device``, ``mirrored`` or ``multi_worker``.

    Args:
        config: the run's config.
        role: the ``TF_CONFIG`` role (default: read from the environment).
        gpus: visible GPUs (default: asked of TensorFlow, for ``auto`` only).

    Raises:
        ConfigError: an unknown strategy, named with the key and the config file.
    """
    name = config.distribute.strategy
    if name not in STRATEGIES:
        raise ConfigError(
            f"{config.source}: section 'distribute': key 'strategy' must be one of "
            f"{', '.join(STRATEGIES)}; got {name!r}"
        )
    if name != "auto":
        return name
    role = cluster_role() if role is None else role
    if role.workers > 1:
        return "multi_worker"
    return "mirrored" if (_gpu_count() if gpus is None else gpus) > 1 else "one_device"


def training_role(config: Config) -> ClusterRole:
    """This process's role in the training of ``config`` (validates ``distribute.strategy``).

    Outside ``multi_worker`` training every process is its own chief, whatever ``TF_CONFIG``
    says.
    """
    role = cluster_role()
    if strategy_kind(config, role=role) != "multi_worker":
        return ClusterRole()
    return role


def make_strategy(kind: str) -> Any:
    """Return the ``tf.distribute.Strategy`` of a resolved ``kind`` (see :func:`strategy_kind`).

    ``one_device`` is TensorFlow's default strategy rather than ``OneDeviceStrategy``: the same
    placement (the first GPU, else the CPU) on the plain Keras code path, which does not pull
    and discard a first batch of every dataset to build the model as Keras does under an
    explicit strategy. The others are made once per process and then reused: two strategies in
    one process number their collective operations from the same start, and a second fit's
    collectives (of other shapes or dtypes) would clash with the first's. ``multi_worker`` must
    be made before TensorFlow runs anything else in the process.
    """
    import tensorflow as tf

    if kind == "one_device":
        return tf.distribute.get_strategy()
    if kind not in STRATEGIES[2:]:
        raise ValueError(f"unknown strategy kind {kind!r}; expected one of {STRATEGIES[1:]}")
    return _shared_strategy(kind)


@functools.cache
def _shared_strategy(kind: str) -> Any:
    import tensorflow as tf

    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def num_workers(strategy: Any) -> int:
    """The number of worker processes a strategy spans (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    jobs = spec.jobs
    return max(sum(spec.num_tasks(job) for job in ("chief", "worker") if job in jobs), 1)


def describe_strategy(strategy: Any) -> str:
    """One line: the strategy, its replicas and workers."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    workers = num_workers(strategy)
    try:
        devices = ", ".join(strategy.extended.worker_devices)
    except RuntimeError:  # TensorFlow's default strategy has no device list
        return "one device (TensorFlow's default strategy)"
    where = f" over {workers} workers" if workers > 1 else ""
    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy
    return f"{name}: {replicas} replica(s){where} ({devices})"


def check_global_batch(config: Config, strategy: Any, validation_jets: int = 0) -> None:
    """Require the first batch of each dataset to split evenly across the replicas.

    Keras builds a distributed model from the mean of the replicas' first batches, which fails
    when their shapes differ. So ``data.batch_size`` (the global batch) must be a multiple of
    the replicas, and so must the validation jets when they are fewer than one batch. (Later
    partial batches may split unevenly: the loss is exact for any split.)

    Args:
        config: the run's config.
        strategy: the ``tf.distribute`` strategy.
        validation_jets: validation jets of the run (0: not known yet, or none).

    Raises:
        ConfigError: the batch size is not a multiple of the number of replicas.
        DataError: fewer validation jets than one batch, not a multiple of the replicas.
    """
    from tfjetflows.data.schema import DataError

    replicas = strategy.num_replicas_in_sync
    batch_size = config.data.batch_size
    if batch_size % replicas:
        raise ConfigError(
            f"{config.source}: section 'data': key 'batch_size' ({batch_size}) is the global "
            f"batch and must be a multiple of the {replicas} replicas of {type(strategy).__name__}"
        )
    if 0 < validation_jets < batch_size and validation_jets % replicas:
        raise DataError(
            f"{validation_jets} validation jets, fewer than one batch of {batch_size} and not a "
            f"multiple of the {replicas} replicas: Keras cannot split that first validation "
            "batch evenly; change data.validation_fraction or use more data"
        )


def dataset_options() -> Any:
    """``tf.data.Options`` for the jet datasets under a multi-worker strategy.

    The datasets come from a Python generator over Parquet files, so ``tf.data`` has no file
    source to shard by (its ``AUTO`` policy would try FILE, fail and fall back to DATA with a
    warning). ``DATA`` is set explicitly: every worker runs the same deterministic pipeline and
    keeps its share of every global batch, so the batches are those of a one-device run.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _first_replica_value(value: Any) -> Any:
    """Inside a replica context: the value of global replica 0, on every replica."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    first = tf.equal(context.replica_id_in_sync_group, 0)
    carried = [tf.cast(v, tf.float64) for v in value]  # one dtype: all_reduce packs them
    total = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [tf.where(first, v, tf.zeros_like(v)) for v in carried]
    )
    return [tf.cast(t, v.dtype) for t, v in zip(total, value, strict=True)]


def chief_values(strategy: Any, values: Sequence[float]) -> list[float]:
    """Return the chief's ``values`` on every worker (a collective: call it on all workers).

    Without several workers this returns ``values`` unchanged and runs nothing.
    """
    if num_workers(strategy) <= 1:
        return [float(v) for v in values]
    import tensorflow as tf

    local = tf.constant([float(v) for v in values], tf.float64)

    @tf.function
    def run() -> Any:
        return strategy.run(lambda: _first_replica_value([tf.identity(local)])[0])

    result = strategy.experimental_local_results(run())[0]
    return [float(v) for v in result.numpy()]


def broadcast_from_chief(strategy: Any, variables: Sequence[Any]) -> None:
    """Give every replica of every worker the chief's values of ``variables``.

    Used after the chief alone has restored a checkpoint (the others may not see its files).
    A collective: call it on all workers, with the same variables in the same order. Without
    several workers it does nothing.
    """
    if num_workers(strategy) <= 1 or not variables:
        return
    import tensorflow as tf

    variables = list(variables)

    @tf.function
    def run() -> None:
        def replica() -> None:
            values = _first_replica_value([tf.convert_to_tensor(v) for v in variables])
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)

        strategy.run(replica)

    run()


def clip_global_gradient(optimizer: Any) -> None:
    """Make a Keras optimizer clip the *global* gradient under ``tf.distribute``.

    Keras 3.15 clips (``clipnorm``, ``global_clipnorm``, ``clipvalue``) each replica's gradient
    before it sums them across replicas, and ``clip(g1) + clip(g2)`` is not ``clip(g1 + g2)``:
    whenever clipping acts, a mirrored run would leave the one-device run. Patched here (on the
    instance, so the saved optimizer is still a plain Keras one): the clipping step sums the
    replicas' gradients first (the one ``all_reduce`` Keras would do anyway) and clips the sum;
    the update step then skips its own ``all_reduce``. Nothing changes with one replica or
    without clipping.

    Args:
        optimizer: a Keras optimizer, before training.
    """
    import tensorflow as tf

    if not (optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue):
        return
    clip = optimizer._clip_gradients
    all_reduce_sum = optimizer._all_reduce_sum_gradients
    summed = threading.local()  # MirroredStrategy traces each replica in its own thread

    def clip_gradients(grads: list[Any]) -> list[Any]:
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return clip(grads)
        present = [g for g in grads if g is not None]
        total = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else [])
        summed.done = True
        return clip([None if g is None else next(total) for g in grads])

    def all_reduce_sum_gradients(grads_and_vars: Any) -> Any:
        if getattr(summed, "done", False):
            summed.done = False
            return list(grads_and_vars)
        return all_reduce_sum(grads_and_vars)

    optimizer._clip_gradients = clip_gradients
    optimizer._all_reduce_sum_gradients = all_reduce_sum_gradients
