"""Two-sample tests between generated and real jets, each with a real-vs-real reference.

- :func:`w1_with_floor`: 1-D Wasserstein-1 distance with a bootstrap error and its noise floor
  (the W1 between two random halves of the real sample).
- :func:`frechet_distance` / :func:`fpd_with_floor`: Fréchet distance between Gaussians fitted to
  two feature sets, as in FID [1] and the Fréchet physics distance (FPD) of [2], on features
  standardised by the real set.
- :func:`classifier_auc`: ROC AUC of a small Keras MLP trained to tell the two sets apart, with
  stratified k-fold cross-validation (0.5 = indistinguishable) [3].

References:
    [1] M. Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
        Equilibrium", NeurIPS 2017, arXiv:1706.08500.
    [2] R. Kansal et al., "Evaluating generative models in high energy physics",
        Phys. Rev. D 107 (2023) 076017, arXiv:2211.10295.
    [3] D. Lopez-Paz and M. Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017,
        arXiv:1610.06545.
"""

from __future__ import annotations

import math

import numpy as np

from tfjetflows.evaluation.metrics import roc_auc, wasserstein_1d

__all__ = ["classifier_auc", "fpd_with_floor", "frechet_distance", "w1_with_floor"]

# Minibatch size of the classifier two-sample test.
_BATCH = 128


def _ratio(value: float, floor: float) -> float:
    """Return value / floor without dividing by zero: inf if only the floor is 0, 1 if both are."""
    if floor > 0:
        return value / floor
    return 1.0 if value == 0 else math.inf


def _halves(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows of ``x`` at random into two halves (the first one shorter if odd)."""
    order = rng.permutation(len(x))
    half = len(x) // 2
    return x[order[:half]], x[order[half : 2 * half]]


def w1_with_floor(
    generated: np.ndarray, real: np.ndarray, rng: np.random.Generator, n_boot: int = 20
) -> dict[str, float]:
    """Return the W1 of ``generated`` vs ``real`` with a bootstrap error and a real-vs-real floor.

    The floor is the mean W1 between two random halves of ``real`` over ``n_boot`` splits, and
    ``floor_err`` their standard deviation. Halves have half the jets, so the floor is about
    sqrt(2) above the noise of a full-size comparison: a ``ratio`` near 1 or below means
    ``generated`` is as close to ``real`` as real data is to itself.

    Args:
        generated: 1-D sample of an observable from generated jets.
        real: 1-D sample of the same observable from real jets (at least 2 values).
        rng: random generator for the bootstrap and the splits.
        n_boot: number of bootstrap resamples and of random splits (>= 2).

    Returns:
        ``{"w1", "w1_err", "floor", "floor_err", "ratio"}``; ``w1_err`` is the standard deviation
        of W1 over resamples (with replacement) of both samples; ``ratio = w1 / floor`` (inf when
        only the floor is 0, 1 when both are).

    Raises:
        ValueError: an empty ``generated``, fewer than 2 ``real`` values or ``n_boot < 2``.
    """
    generated = np.asarray(generated, np.float64).ravel()
    real = np.asarray(real, np.float64).ravel()
    if len(generated) == 0 or len(real) < 2:
        raise ValueError(
            f"w1_with_floor needs a non-empty generated sample and >= 2 real values, got "
            f"{len(generated)} generated and {len(real)} real"
        )
    if n_boot < 2:
        raise ValueError(f"w1_with_floor: n_boot must be >= 2, got {n_boot}")
    w1 = wasserstein_1d(generated, real)
    boot = [
        wasserstein_1d(
            rng.choice(generated, len(generated)), rng.choice(real, len(real))
        )
        for _ in range(n_boot)
    ]
    floors = [wasserstein_1d(*_halves(real, rng)) for _ in range(n_boot)]
    floor = float(np.mean(floors))
    return {
        "w1": w1,
        "w1_err": float(np.std(boot, ddof=1)),
        "floor": floor,
        "floor_err": float(np.std(floors, ddof=1)),
        "ratio": _ratio(w1, floor),
    }


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be [N, F] features with N >= 2, got shape {list(x.shape)}")
    return x


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Return the symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Return the Fréchet distance between Gaussians fitted to ``a`` [N, F] and ``b`` [M, F].

    ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` with sample covariances (ddof 1).
    ``Tr (C_a C_b)^(1/2)`` is the sum of the square roots of the eigenvalues of the symmetric
    matrix ``C_a^(1/2) C_b C_a^(1/2)`` (same spectrum as ``C_a C_b``), found with ``eigh`` and
    clipped at 0, so rounding cannot make it complex. The result is clipped at 0.

    Example:
        >>> a = np.array([[0.0], [2.0]]); round(frechet_distance(a, a + 3.0), 12)
        9.0

    Raises:
        ValueError: not 2-D (1-D is read as one feature), fewer than 2 rows, or different F.
    """
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance: a has {a.shape[1]} features and b has {b.shape[1]}"
        )
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
    mean_term = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))
    return max(0.0, mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross))


def fpd_with_floor(
    generated_features: np.ndarray, real_features: np.ndarray, rng: np.random.Generator
) -> dict[str, float]:
    """Return the Fréchet distance of generated vs real features and its real-vs-real floor.

    Both sets are standardised with the real set's per-feature mean and standard deviation
    (ddof 0; a constant feature is only centred). The floor is the distance between two random
    halves of the standardised real set.

    Args:
        generated_features: [N, F] features of generated jets (1-D: one feature).
        real_features: [M, F] features of real jets, M >= 4.
        rng: random generator for the split.

    Returns:
        ``{"fpd", "floor"}``.
    """
    generated = _as_features(generated_features, "generated_features")
    real = _as_features(real_features, "real_features")
    if len(real) < 4:
        raise ValueError(f"fpd_with_floor needs >= 4 real rows for its floor, got {len(real)}")
    mean, std = real.mean(axis=0), real.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    generated, real = (generated - mean) / std, (real - mean) / std
    return {
        "fpd": frechet_distance(generated, real),
        "floor": frechet_distance(*_halves(real, rng)),
    }


def _stratified_folds(n: int, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Return ``folds`` index arrays into [a-rows 0..n-1, b-rows n..2n-1], balanced per class."""
    parts_a = np.array_split(rng.permutation(n), folds)
    parts_b = np.array_split(rng.permutation(n) + n, folds)
    return [np.concatenate([pa, pb]) for pa, pb in zip(parts_a, parts_b, strict=True)]


def classifier_auc(
    a: np.ndarray,
    b: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = 20,
) -> dict[str, float]:
    """Return the cross-validated ROC AUC of an MLP telling ``a`` [N, F] from ``b`` [M, F].

    The larger set is subsampled (seeded) to the size of the smaller one. The jets are split into
    ``folds`` stratified folds; for each, a Keras MLP (2 x 32 ReLU, sigmoid output, Adam at 1e-2,
    batch 128, binary cross-entropy) is trained on the other folds, with features standardised
    by the training folds' mean and standard deviation, and scored on the held-out fold with
    :func:`~tfjetflows.evaluation.metrics.roc_auc` (``a`` is the positive class). Calls
    ``keras.utils.set_random_seed(seed)``, which reseeds Python, NumPy and the backend globally.

    Args:
        a: [N, F] features of one set (1-D: one feature).
        b: [M, F] features of the other.
        folds: number of folds (>= 2; each class needs at least ``folds`` rows).
        seed: seed for the subsampling, the folds and the network.
        epochs: training epochs per fold.

    Returns:
        ``{"auc", "auc_err"}``: mean held-out AUC and its standard error over folds. 0.5 means
        the classifier cannot tell the sets apart; 1 (or 0) means it always can.

    Raises:
        ValueError: mismatched features, ``folds < 2``, too few rows, or ``epochs < 1``.
    """
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"classifier_auc: a has {a.shape[1]} features and b has {b.shape[1]}")
    if folds < 2 or epochs < 1:
        raise ValueError(f"classifier_auc: need folds >= 2 and epochs >= 1, got {folds}, {epochs}")
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"classifier_auc: {n} rows per class is fewer than {folds} folds")

    import keras  # lazy: keep TensorFlow out of imports that only need the numpy metrics

    rng = np.random.default_rng(seed)
    a = a[np.sort(rng.choice(len(a), n, replace=False))]
    b = b[np.sort(rng.choice(len(b), n, replace=False))]
    x = np.concatenate([a, b]).astype(np.float32)
    y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
    keras.utils.set_random_seed(seed)
    # One model compiled once: each fold restarts from the same initial weights and a zeroed
    # optimizer state, so the training step is traced once (a fresh model per fold costs ~1 s).
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.optimizer.build(model.trainable_variables)
    initial = model.get_weights()
    aucs = []
    for held_out in _stratified_folds(n, folds, rng):
        train = np.setdiff1d(np.arange(2 * n), held_out)
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        model.set_weights(initial)
        for variable in model.optimizer.variables:
            if not variable.path.endswith("learning_rate"):
                variable.assign(np.zeros(variable.shape, variable.dtype))
        # ``epochs`` shuffles of the training fold concatenated and fitted in one pass: the
        # same number of steps as ``epochs`` epochs, without Keras' per-epoch overhead.
        order = np.concatenate([rng.permutation(train) for _ in range(epochs)])
        model.fit(
            (x[order] - mean) / std, y[order], batch_size=_BATCH, epochs=1, shuffle=False,
            verbose=0,
        )
        scores = keras.ops.convert_to_numpy(model((x[held_out] - mean) / std)).ravel()
        labels = y[held_out] == 1
        aucs.append(roc_auc(scores[labels], scores[~labels]))
    return {
        "auc": float(np.mean(aucs)),
        "auc_err": float(np.std(aucs, ddof=1) / np.sqrt(folds)),
    }
