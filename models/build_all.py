"""Rebuild every example model in this folder: ``python models/build_all.py``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = [
    "mlp_digits",
    "mlp_digits_128",
    "mlp_mnist",
    "mlp_mnist_128",
    "mlp_mnist1d",
    "cnn_mnist",
    "cnn_digits",
    "residual_mlp_digits",
    "rnn_digits",
    "lstm_digits",
    "gru_digits",
    "sign_mlp_digits",
]


def build_all(out_dir: Path = HERE) -> list[Path]:
    """Run each builder script's ``build()`` into ``out_dir``; returns the written paths."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # the scripts import their helpers as top-level modules
    return [importlib.import_module(name).build(out_dir) for name in MODELS]


if __name__ == "__main__":
    for path in build_all():
        print(f"{path.name:28s} {path.stat().st_size / 1024:8.1f} KiB")
