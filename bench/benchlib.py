"""Shared helpers of the benchmark scripts: timing, machine description, rows, JSON and Markdown.

Every script in ``bench/`` reports *rows*: one figure each, in the schema below, so that
``run_all.py`` can put them in one table and one JSON file::

    {"name": "sampling MAF teacher vectors n=100", "value": 12.3, "unit": "jets/s",
     "spread": [11.9, 12.6], "peer": 4.5, "peer_name": "zuko", "ratio": 2.7,
     "load": 1.2, "note": "", "detail": {...}}

``value`` is None (and ``note`` says why) for a bench that was skipped. ``ratio`` is always
``value / peer`` (ours over theirs), so above 1 means we are faster for rates.

This module imports neither TensorFlow nor torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Row",
    "cpu_model",
    "fill_ratios",
    "machine_info",
    "markdown_table",
    "package_versions",
    "rate_row",
    "skipped_row",
    "time_calls",
    "usable_cores",
    "write_json",
]

Row = dict[str, Any]

_PACKAGES = (
    "tensorflow",
    "keras",
    "tensorflow-probability",
    "numpy",
    "pyarrow",
    "torch",
    "zuko",
    "pythia8mc",
    "fastjet",
)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: Iterable[str] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions (from the package metadata, without importing them); None if absent."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and library versions, load average now."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def time_calls(
    fn: Callable[[], Any], repeats: int, *, warmup: int = 1, min_seconds: float = 0.0
) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls (tracing, caches), then ``repeats`` timed calls.

    Args:
        fn: the call to time; it must block until its work is done (return numpy, not a lazy
            tensor, when in doubt).
        repeats: timed calls (at least 1).
        warmup: untimed calls first; the first one's duration is reported as ``first_s``.
        min_seconds: keep calling past ``repeats`` until the timed calls add up to this.

    Returns:
        ``seconds`` (each timed call), ``median_s``, ``min_s``, ``max_s``, ``first_s``.
    """
    first = None
    for k in range(warmup):
        start = time.perf_counter()
        fn()
        if k == 0:
            first = time.perf_counter() - start
    seconds: list[float] = []
    while len(seconds) < max(repeats, 1) or sum(seconds) < min_seconds:
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "first_s": first,
    }


def rate_row(
    name: str, units_per_call: float, timing: Mapping[str, Any], unit: str, **extra: Any
) -> Row:
    """A row whose figure is ``units_per_call / median time``; spread from the slowest/fastest."""
    row: Row = {
        "name": name,
        "value": units_per_call / timing["median_s"],
        "unit": unit,
        "spread": [units_per_call / timing["max_s"], units_per_call / timing["min_s"]],
        "peer": None,
        "peer_name": None,
        "ratio": None,
        "load": os.getloadavg()[0],
        "note": "",
        "detail": {"units_per_call": units_per_call, **timing},
    }
    row.update(extra)
    return row


def skipped_row(name: str, reason: str, unit: str = "") -> Row:
    """A row for a bench that could not run; ``note`` says why."""
    return {
        "name": name,
        "value": None,
        "unit": unit,
        "spread": None,
        "peer": None,
        "peer_name": None,
        "ratio": None,
        "load": os.getloadavg()[0],
        "note": f"skipped: {reason}",
        "detail": {},
    }


def fill_ratios(rows: Sequence[Row], peers: Mapping[str, tuple[str, float | None]]) -> None:
    """Set ``peer``, ``peer_name`` and ``ratio`` of rows that name a ``peer_key`` in ``peers``.

    ``peers`` maps a key to ``(peer name, figure)``; a missing key or a None figure leaves the
    row without a peer (the note says the peer was not measured). Rows that already have a peer
    are left alone.
    """
    for row in rows:
        key = row.get("peer_key")
        if not key or row.get("peer") is not None:  # no peer wanted, or already given one
            continue
        name, figure = peers.get(key, (None, None))
        if figure is None:
            if row.get("value") is not None and "peer not measured" not in row["note"]:
                row["note"] = "; ".join(filter(None, [row["note"], "peer not measured"]))
            continue
        row["peer"], row["peer_name"] = figure, name
        if row.get("value") is not None and figure:
            row["ratio"] = row["value"] / figure


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: name, figure (spread), unit, peer, ratio, load, note."""
    lines = [
        "| bench | figure (min-max) | unit | peer | ours/peer | load | note |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.get("value") is None:
            figure = "-"
        else:
            figure = _fmt(row["value"])
            if row.get("spread"):
                lo, hi = row["spread"]
                figure += f" ({_fmt(lo)}-{_fmt(hi)})"
        peer = "-" if row.get("peer") is None else f"{_fmt(row['peer'])} {row['peer_name']}"
        ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}"
        load = "-" if row.get("load") is None else f"{row['load']:.1f}"
        note = str(row.get("note", "")).replace("|", "/")
        name = str(row["name"]).replace("|", "/")
        lines.append(
            f"| {name} | {figure} | {row.get('unit', '')} | {peer} | {ratio} | {load} | {note} |"
        )
    return "\n".join(lines) + "\n"


def _finite(value: Any) -> Any:
    """Replace NaN/inf floats by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented strict JSON atomically (temporary file, then rename)."""
    from tfjetflows.atomic import atomic_write_text

    text = json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n"
    atomic_write_text(Path(path), text)
    return Path(path)
