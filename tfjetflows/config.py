"""Declarative YAML configs validated into dataclasses.

A config file has the sections ``seed``, ``data``, ``selection``, ``representation``, ``model``,
``training``, ``wandb``, ``distribute`` and ``distill`` (used by ``tfjf distill`` only). Fixed
sections are dataclasses whose field names are the YAML keys; ``representation`` and ``model``
choose a class with ``kind`` and their other keys are that class's keyword arguments, one to one.
Unknown or misspelt keys are an error that names the key and the file. Files are read with
``yaml.safe_load``; nothing is evaluated.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tfjetflows.errors import UserError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "DistributeConfig",
    "SelectionConfig",
    "TrainingConfig",
    "WandbConfig",
    "build_from_section",
    "config_to_dict",
    "default_config_path",
    "load_config",
    "parse_overrides",
]

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the key and the file."""


@dataclass
class DataConfig:
    """Where jets come from and how they are batched.

    ``files`` are Parquet files, globs or folders (empty: the built-in synthetic data).
    ``conditions`` lists the per-jet columns a conditional model is given (``y``, ``pt``).
    The selected jets are held in memory in compact form (top-K hits) when they need at most
    ``cache_max_mb`` megabytes, so only the first pass reads Parquet; 0 streams every epoch.
    """

    files: list[str] = field(default_factory=list)
    batch_size: int = 256
    validation_fraction: float = 0.1
    shuffle_buffer: int = 4096
    on_bad_jet: str = "error"
    max_jets: int | None = None
    conditions: list[str] = field(default_factory=list)
    cache_max_mb: int = 2048


@dataclass
class SelectionConfig:
    """Which jets are kept while streaming.

    Hits are pixels with ``|E| >= threshold`` of the chosen ``channels`` (HCAL counted in
    towers); ``min_hits``/``max_hits`` bound their number and ``energy_min``/``energy_max``
    their summed energy. ``labels`` keeps only those classes (None keeps all).
    """

    channels: list[str] = field(default_factory=lambda: ["ecal"])
    min_hits: int = 0
    max_hits: int | None = None
    energy_min: float | None = None
    energy_max: float | None = None
    labels: list[int] | None = None
    threshold: float = 1e-3


@dataclass
class TrainingConfig:
    """Optimisation: epochs, learning rate and its schedule, clipping and early stopping.

    ``lr_schedule``: ``cosine`` (decay to 0 over all steps), ``constant``, or ``plateau``
    (halve the rate when the validation loss has not improved for ``plateau_patience`` epochs,
    the BNAF paper's recipe). ``amsgrad`` switches Adam to AMSGrad; ``ema_momentum`` turns on
    Polyak averaging of the weights (an exponential moving average that replaces the weights
    at the end of training).

    ``evaluation_samples`` jets are sampled after training and compared with as many held-out
    jets (W1 of hit multiplicity and energy sum per channel, in ``metrics.json``); 0 skips it.
    """

    epochs: int = 20
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    plateau_patience: int = 5
    amsgrad: bool = False
    ema_momentum: float | None = None
    clipnorm: float | None = 5.0
    early_stopping_patience: int | None = None
    steps_per_execution: int = 1
    jit_compile: bool = False
    evaluation_samples: int = 1000


@dataclass
class WandbConfig:
    """Weights & Biases logging (offline automatically when there is no network)."""

    enabled: bool = False
    project: str = "tfjetflows"
    mode: str = "auto"
    sample_images: int = 8


@dataclass
class DistillConfig:
    """Teacher-student distillation (``tfjf distill``; ignored by ``tfjf fit``).

    The loss terms are described in :mod:`tfjetflows.flows.distillation`: ``data`` and
    ``latent`` compare whole chains, the block terms (block outputs, and MADE outputs weighted
    by ``params_weight``) feed every student block the teacher's input. They count during the
    first ``blockwise_epochs`` epochs; the rest fine-tune the whole chain on the data.
    """

    blockwise_epochs: int = 5
    data_weight: float = 1.0
    latent_weight: float = 1.0
    params_weight: float = 1.0


@dataclass
class DistributeConfig:
    """How training is spread over devices and machines (``tf.distribute``).

    ``strategy``: ``auto`` (``multi_worker`` when ``TF_CONFIG`` names more than one worker,
    else ``mirrored`` when more than one GPU is visible, else ``one_device``), ``one_device``,
    ``mirrored`` (all GPUs of this machine, or all logical CPUs when there is no GPU) or
    ``multi_worker`` (``MultiWorkerMirroredStrategy``, configured by ``TF_CONFIG``).
    ``data.batch_size`` stays the global batch, split across the replicas. See
    :mod:`tfjetflows.training.distribute`.
    """

    strategy: str = "auto"


_SECTIONS = {
    "data": DataConfig,
    "selection": SelectionConfig,
    "training": TrainingConfig,
    "wandb": WandbConfig,
    "distribute": DistributeConfig,
    "distill": DistillConfig,
}


@dataclass
class Config:
    """A whole, validated config. ``source`` is the file it was read from."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    representation: dict[str, Any] = field(default_factory=lambda: {"kind": "hits"})
    model: dict[str, Any] = field(default_factory=lambda: {"kind": "maf"})
    training: TrainingConfig = field(default_factory=TrainingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    source: str = "<defaults>"


def default_config_path() -> Path:
    """Return the shipped default config, ``configs/maf_hits.yaml``."""
    return Path(__file__).resolve().parent.parent / "configs" / "maf_hits.yaml"


def _dataclass_from(cls: type[T], values: Any, where: str) -> T:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(names))}"
            )
    hints = typing.get_type_hints(cls)
    return cls(
        **{
            key: _coerce(value, hints[key], f"{where}: key {key!r}")
            for key, value in values.items()
        }
    )


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field's type; numbers written like ``1e-4`` become floats.

    (YAML 1.1, which PyYAML follows, reads ``1e-4`` as a string: it wants ``1.0e-4``.)
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(item, args[0], where) for item in value] if args else value
    else:
        return value
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    kind = "a list" if origin is list else kinds.get(annotation, str(annotation))
    raise ConfigError(f"{where} must be {kind}, got {value!r}")


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``section.key=value`` strings; values are YAML scalars or lists."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({err})") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def _apply_override(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, and validate it.

    Args:
        path: the YAML file; None reads the shipped default.
        overrides: ``section.key=value`` strings applied after reading.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: unreadable file, unknown key, or wrong type, naming the key and file.
    """
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for keys, value in parse_overrides(overrides):
        _apply_override(raw, keys, value)
    return config_from_dict(raw, str(path))


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain mapping (as read from YAML) into a :class:`Config`."""
    known = {f.name for f in dataclasses.fields(Config)} - {"source"}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{source}: unknown section {key!r}; known: {', '.join(sorted(known))}"
            )
    kwargs: dict[str, Any] = {"source": source}
    for name, cls in _SECTIONS.items():
        kwargs[name] = _dataclass_from(cls, raw.get(name), f"{source}: section {name!r}")
    for name in ("representation", "model"):
        section = raw.get(name) or {}
        if not isinstance(section, Mapping) or "kind" not in section:
            raise ConfigError(f"{source}: section {name!r} needs a 'kind' key")
        kwargs[name] = dict(section)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"{source}: 'seed' must be an integer, got {seed!r}")
    kwargs["seed"] = seed
    return Config(**kwargs)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return the config as plain data, ready for ``yaml.safe_dump`` (``source`` dropped)."""
    out = dataclasses.asdict(config)
    out.pop("source")
    return out


def build_from_section(
    registry: Mapping[str, Callable[..., T]],
    section: Mapping[str, Any],
    where: str,
    **extra: Any,
) -> T:
    """Construct ``registry[section['kind']](**rest, **extra)``, checking every key.

    The keys of ``section`` other than ``kind`` must be keyword arguments of the chosen
    constructor; ``extra`` supplies arguments derived from the data (never from the file).
    """
    kind = section.get("kind")
    if kind not in registry:
        raise ConfigError(
            f"{where}: unknown kind {kind!r}; known kinds: {', '.join(sorted(registry))}"
        )
    factory = registry[kind]
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in section.items() if k != "kind"}
    for key in kwargs:
        if key in extra or (key not in params and not accepts_any):
            allowed = sorted(k for k in params if k not in extra and k != "self")
            raise ConfigError(
                f"{where}: unknown key {key!r} for kind {kind!r}; known keys: {', '.join(allowed)}"
            )
    try:
        return factory(**kwargs, **extra)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
