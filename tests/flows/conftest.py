"""Shared fixtures for the flow tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import keras
import numpy as np
import pytest


@pytest.fixture
def float64() -> Iterator[None]:
    """Run the test in float64 (for Jacobian checks), restoring floatx and the dtype policy.

    Keras 3 caches its global dtype policy the first time a layer is made, from the floatx of
    that moment; ``set_floatx`` alone does not change it afterwards, so both are set here.
    """
    previous_floatx = keras.config.floatx()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


def _randomize(obj: keras.layers.Layer, seed: int = 0, scale: float = 0.5) -> None:
    """Give every weight of ``obj`` random values, so flows are far from the identity.

    Moving variances get values in [0.5, 2] (they must be positive); everything else is
    ``scale * N(0, 1)``.
    """
    rng = np.random.default_rng(seed)
    for variable in obj.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, size=shape)
        else:
            value = scale * rng.normal(size=shape)
        variable.assign(value.astype(variable.dtype))


@pytest.fixture
def randomize() -> Callable[..., None]:
    """Return a function that fills a layer's weights with seeded random values."""
    return _randomize
