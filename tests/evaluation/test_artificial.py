import numpy as np

from tfjetflows.data.schema import channel_grid
from tfjetflows.evaluation.artificial import random_positions, shuffled_energies


def _jets():
    rng = np.random.default_rng(0)
    images = np.zeros((3, 3, 125, 125), np.float32)
    for j in range(3):
        for c in (0, 1):
            idx = rng.choice(125 * 125, size=20 + 5 * j, replace=False)
            images[j, c].flat[idx] = rng.exponential(2.0, size=len(idx)) + 0.01
        towers = rng.choice(25 * 25, size=6, replace=False)
        for t in towers:
            r, q = divmod(int(t), 25)
            images[j, 2, 5 * r : 5 * r + 5, 5 * q : 5 * q + 5] = rng.exponential(3.0) + 0.01
    return images


def _sorted_values(images, name):
    grid = channel_grid(images, name).reshape(len(images), -1)
    return np.sort(grid, axis=1)


def test_random_positions_keep_multiplicity_and_energies_but_move_hits():
    images = _jets()
    moved = random_positions(images, np.random.default_rng(1))
    for name in ("tracks", "ecal", "hcal"):
        np.testing.assert_allclose(
            _sorted_values(moved, name), _sorted_values(images, name), rtol=1e-6
        )
    assert not np.array_equal(moved[:, 1] != 0, images[:, 1] != 0)
    # HCAL stays as equal-valued 5x5 blocks
    hcal = moved[:, 2].reshape(3, 25, 5, 25, 5)
    assert np.all(hcal == hcal[:, :, :1, :, :1])


def test_shuffled_energies_keep_positions_and_permute_values():
    images = _jets()
    shuffled = shuffled_energies(images, np.random.default_rng(2))
    for name in ("tracks", "ecal", "hcal"):
        np.testing.assert_allclose(
            _sorted_values(shuffled, name), _sorted_values(images, name), rtol=1e-6
        )
    np.testing.assert_array_equal(shuffled != 0, images != 0)
    assert not np.array_equal(shuffled[:, 1], images[:, 1])
