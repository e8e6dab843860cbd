"""An in-memory cache of the selected jets in their compact, noise-free form.

Reading nested Parquet lists is the slow part of the input pipeline (about 2,000 jets/s per core
for the decode alone), and a training run reads every file once per epoch. The counting pass
that happens before training anyway (:func:`tfjetflows.data.pipeline.scan_split`) keeps what the
representation needs of each selected jet (:meth:`Representation.extract`: the top-K hits, ~2 KB
per jet for the default representation), so every epoch after it is a shuffle of memory plus
fresh dequantization noise (:meth:`Representation.encode_extracted`), never a Parquet read.

The cache is plain numpy arrays in memory (no file, no pickle). When the jets need more than
``data.cache_max_mb`` megabytes, the cache is dropped and epochs stream from Parquet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["JetCache"]


@dataclass
class JetCache:
    """Compact jets in file order: representation parts, scalar columns and split flags.

    Args:
        max_bytes: the size above which :meth:`add` gives up and returns False.
    """

    max_bytes: int
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    in_validation: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    _pending: list[tuple[dict, dict, np.ndarray]] = field(default_factory=list, repr=False)
    nbytes: int = 0

    def add(
        self,
        parts: Mapping[str, np.ndarray],
        scalars: Mapping[str, np.ndarray],
        in_validation: np.ndarray,
    ) -> bool:
        """Append a batch of jets; return False (and free everything) if over ``max_bytes``."""
        self.nbytes += sum(v.nbytes for v in parts.values())
        self.nbytes += sum(v.nbytes for v in scalars.values()) + in_validation.nbytes
        if self.nbytes > self.max_bytes:
            self._pending.clear()
            return False
        self._pending.append((dict(parts), dict(scalars), np.asarray(in_validation, bool)))
        return True

    def finish(self) -> JetCache:
        """Join the appended batches into single arrays; return self."""
        if self._pending:
            self.parts = {
                k: np.concatenate([p[0][k] for p in self._pending]) for k in self._pending[0][0]
            }
            self.scalars = {
                k: np.concatenate([p[1][k] for p in self._pending]) for k in self._pending[0][1]
            }
            self.in_validation = np.concatenate([p[2] for p in self._pending])
            self._pending.clear()
        return self

    def indices(self, validation: bool) -> np.ndarray:
        """Positions of the training (or validation) jets, in file order."""
        return np.flatnonzero(self.in_validation == validation)

    def take(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return the parts and the scalar columns of the jets at ``rows``."""
        return (
            {k: v[rows] for k, v in self.parts.items()},
            {k: v[rows] for k, v in self.scalars.items()},
        )
