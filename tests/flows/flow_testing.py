"""Shared test data of the flow tests."""


def preprocessing_config():
    """A 3-dim Preprocessing config: one bounded, one energy and one free dimension."""
    nan = None  # get_config writes NaN as None
    return {
        "spec": {
            "lower": [0.0, nan, nan],
            "upper": [4.0, nan, nan],
            "energy_scale": [nan, 2.0, nan],
        },
        "mean": [0.2, 0.1, -0.3],
        "std": [1.2, 0.7, 2.0],
        "clip_eps": 1e-6,
        "dtype": "float32",
        "name": "preprocessing",
    }
