"""Shared helpers for the example-model builder scripts: a tiny graph builder with seeded init.

Every model is opset 17, float32, with a dynamic leading dimension named ``batch`` on its
inputs and outputs. Weights use He init before a ReLU and Glorot init elsewhere (recurrent
and output layers); biases are small and non-zero so a dropped bias shows up in tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; any onnxruntime since 1.13 reads it
HERE = Path(__file__).resolve().parent
Signature = list[tuple[str, list]]  # (value name, shape); symbolic dimensions are strings


def he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He (Kaiming) normal init, for layers followed by a ReLU."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def glorot(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int
) -> np.ndarray:
    """Glorot (Xavier) uniform init, for output, tanh and recurrent layers."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def bias(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """A small uniform bias in +-1/sqrt(fan_in), as torch initialises its layers."""
    limit = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-limit, limit, shape).astype(np.float32)


class Net:
    """Collects nodes and initializers; names every intermediate value uniquely."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def param(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
        """Add a node; returns its output name (or names, when it has several)."""
        if isinstance(outputs, list):
            names = outputs
        else:
            names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, inputs, names, name=self.fresh(op_type), **attrs)
        self.nodes.append(node)
        return names[0] if len(names) == 1 else names

    def gemm(
        self, x: str, n_in: int, n_out: int, layer: str, init: str = "he", out: str | None = None
    ) -> str:
        """A dense layer ``x @ W.T + b`` as Gemm(transB=1), W stored [n_out, n_in] as torch does."""
        if init == "he":
            w = he(self.rng, (n_out, n_in), n_in)
        else:
            w = glorot(self.rng, (n_out, n_in), n_in, n_out)
        w_name = self.param(f"{layer}.weight", w)
        b_name = self.param(f"{layer}.bias", bias(self.rng, (n_out,), n_in))
        return self.op("Gemm", [x, w_name, b_name], [out] if out else 1, transB=1)

    def conv(self, x: str, c_in: int, c_out: int, k: int, layer: str, pad: int = 0) -> str:
        """A k x k convolution with He init."""
        fan_in = c_in * k * k
        w_name = self.param(f"{layer}.weight", he(self.rng, (c_out, c_in, k, k), fan_in))
        b_name = self.param(f"{layer}.bias", bias(self.rng, (c_out,), fan_in))
        return self.op("Conv", [x, w_name, b_name], kernel_shape=[k, k], pads=[pad] * 4)

    def model(self, inputs: Signature, outputs: Signature) -> onnx.ModelProto:
        """The checked ModelProto; shapes are lists whose symbolic entries are strings."""
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="projc-models"
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model

    def save(self, inputs: Signature, outputs: Signature, out_dir: Path = HERE) -> Path:
        """Write ``<name>.onnx`` into ``out_dir`` (default: beside the scripts); return its path."""
        path = Path(out_dir) / f"{self.name}.onnx"
        onnx.save(self.model(inputs, outputs), str(path))
        return path


def build_mlp(
    name: str, sizes: list[int], seed: int, activation: str = "Relu", out_dir: Path = HERE
) -> Path:
    """An MLP on input ``x`` [batch, sizes[0]] with logits output ``logits`` [batch, sizes[-1]]."""
    net = Net(name, seed)
    h = "x"
    last = len(sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i < last:
            h = net.op(activation, [net.gemm(h, n_in, n_out, f"fc{i + 1}")])
        else:
            h = net.gemm(h, n_in, n_out, f"fc{i + 1}", init="glorot", out="logits")
    return net.save([("x", ["batch", sizes[0]])], [("logits", ["batch", sizes[-1]])], out_dir)
