"""Built-in data sets and .npz files."""

import numpy as np
import pytest

from projc.datasets import fit_to_input, load_dataset
from projc.errors import DataError


@pytest.mark.parametrize(
    "name, n_train, n_test, features",
    [("digits", 1437, 360, 64), ("mnist5k", 4000, 1000, 784), ("mnist1d", 4000, 1000, 40)],
)
def test_builtin_sizes(name, n_train, n_test, features):
    d = load_dataset(name)
    assert (len(d.x_train), len(d.x_test)) == (n_train, n_test)
    assert d.x_train.shape[1:] == (features,) and d.x_train.dtype == np.float32
    assert d.num_classes == 10
    assert set(np.unique(d.y_test)) == set(range(10))


def test_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(a.x_test, b.x_test)
    train = {row.tobytes() for row in a.x_train}
    assert sum(row.tobytes() in train for row in a.x_test) < 5  # digits has a few duplicate images


def test_npz_roundtrip_and_split(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    y = np.arange(50) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(str(tmp_path / "d.npz"))
    assert len(d.x_train) + len(d.x_test) == 50 and d.num_classes == 3
    np.savez(tmp_path / "e.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    assert len(load_dataset(str(tmp_path / "e.npz")).x_test) == 5


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 2))}, "missing array 'y'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, "4 samples but 3 labels"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "non-negative class indices"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0), "x_test": np.zeros((1, 2)), "y_test": np.zeros(1)}, "empty"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_fit_to_input():
    x = np.zeros((5, 64), np.float32)
    assert fit_to_input(x, (32, 1, 8, 8), "digits", "x").shape == (5, 1, 8, 8)
    with pytest.raises(DataError, match="do not fit"):
        fit_to_input(x, (32, 10), "digits", "x")
