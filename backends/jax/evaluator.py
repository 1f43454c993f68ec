"""Forward evaluation of a network IR graph with JAX: one rule per op, one jitted function.

Values known when the model is compiled (initializers that are not trained, ``Constant``
nodes, inputs bound as static) stay concrete NumPy/JAX arrays while the graph is traced, so
rules can read shapes and indices from them; everything downstream of a run-time input or a
parameter is traced into the single XLA program.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
import onnx_ir as ir
from jax.core import Tracer

from projc.backends.jax import ops
from projc.backends.jax.ops._context import OpContext
from projc.errors import ProjcError, UnsupportedOpError
from projc.ir import is_parameter, model_opset


def _opset(model_or_graph_opsets: Mapping[str, int], domain: str) -> int:
    domain = "" if domain == "ai.onnx" else domain
    return model_or_graph_opsets.get(domain, model_or_graph_opsets.get("ai.onnx", 1))


def unsupported_nodes(model: ir.Model) -> list[tuple[str, str, str, int]]:
    """Every node (subgraphs included) with no forward rule: (name, op, domain, opset)."""
    opsets = model.opset_imports
    missing = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        version = _opset(opsets, node.domain)
        if ops.lookup(node.op_type, version, node.domain) is None:
            missing.append((node.name or "", node.op_type, node.domain, version))
    return missing


def _as_jax(x: Any) -> Any:
    if isinstance(x, np.ndarray) and x.dtype != object:
        return jax.numpy.asarray(x)
    if isinstance(x, (list, tuple)):
        return [_as_jax(v) for v in x]
    return x


def _is_concrete(values: Sequence[Any]) -> bool:
    return not any(isinstance(v, Tracer) for v in values)


def _static_value(x: Any) -> Any:
    """A static input as NumPy; sequences stay lists and an absent optional stays ``None``."""
    if x is None or isinstance(x, (list, tuple)):
        return x if x is None else [np.asarray(v) for v in x]
    return np.asarray(x)


class _Interpreter:
    def __init__(self, opsets: Mapping[str, int]):
        self.opsets = dict(opsets)

    def run_graph(self, graph: ir.Graph, args: Sequence[Any], env: dict | None = None) -> list[Any]:
        """Evaluate ``graph`` with its inputs bound to ``args``; outer-scope values from ``env``."""
        env = dict(env or {})
        for value, arg in zip(graph.inputs, args):
            env[value] = arg
        for name, value in graph.initializers.items():
            if value not in env:
                env[value] = value.const_value.numpy()
        for node in graph:
            self._run_node(node, env)
        return [env[v] for v in graph.outputs]

    def _run_node(self, node: ir.Node, env: dict) -> None:
        version = _opset(self.opsets, node.domain)
        rule = ops.lookup(node.op_type, version, node.domain)
        if rule is None:
            raise UnsupportedOpError("cannot evaluate", [(node.name, node.op_type, node.domain, version)])
        inputs = [None if v is None else env[v] for v in node.inputs]
        ctx = OpContext(node, version, lambda g, a: self.run_graph(g, a, env))
        try:
            if _is_concrete(inputs):
                with jax.ensure_compile_time_eval():
                    result = rule(ctx, *inputs)
            else:
                result = rule(ctx, *inputs)
        except ProjcError:
            raise
        except Exception as exc:
            raise RuntimeError(
                f"while evaluating node {node.name!r} ({node.op_type}, opset {version}): {exc}"
            ) from exc
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for value, out in zip(node.outputs, outputs):
            env[value] = out


class Forward:
    """A compiled forward pass of a model.

    Call it with the run-time inputs (a dict by name or a sequence in graph order) and,
    optionally, parameter values that replace the model's initializers. Returns the graph
    outputs as a list of JAX arrays.
    """

    def __init__(
        self,
        model: ir.Model,
        *,
        static_inputs: Mapping[str, np.ndarray] | None = None,
        jit: bool = True,
    ):
        missing = unsupported_nodes(model)
        if missing:
            raise UnsupportedOpError(f"model {model.graph.name!r}", missing)
        self.model = model
        graph = model.graph
        self._static = dict(static_inputs or {})
        initializer_names = set(graph.initializers)
        self.input_names = [
            v.name for v in graph.inputs if v.name not in initializer_names and v.name not in self._static
        ]
        self.param_names = [n for n, v in graph.initializers.items() if is_parameter(v)]
        self.output_names = [v.name for v in graph.outputs]
        self._interp = _Interpreter(model.opset_imports)
        self._fn = jax.jit(self._evaluate) if jit else self._evaluate

    def initial_params(self) -> dict[str, np.ndarray]:
        """The model's parameter values, by name."""
        inits = self.model.graph.initializers
        return {n: inits[n].const_value.numpy() for n in self.param_names}

    def _evaluate(self, params: Mapping[str, Any], inputs: Sequence[Any]) -> list[Any]:
        graph = self.model.graph
        env: dict = {}
        by_name = dict(zip(self.input_names, inputs))
        for value in graph.inputs:
            if value.name in self._static:
                env[value] = _static_value(self._static[value.name])
            elif value.name in by_name:
                env[value] = by_name[value.name]
        for name, value in graph.initializers.items():
            if name in params:
                env[value] = params[name]
            elif value not in env:
                env[value] = value.const_value.numpy()
        outputs = self._interp.run_graph(graph, [env[v] for v in graph.inputs], env)
        # a graph output known at compile time is a NumPy value; jit wants JAX arrays
        return [_as_jax(o) for o in outputs]

    def __call__(self, inputs: Mapping[str, Any] | Sequence[Any], params: Mapping[str, Any] | None = None):
        if isinstance(inputs, Mapping):
            inputs = [inputs[n] for n in self.input_names]
        if params is None:
            params = self.initial_params()
        return self._fn(dict(params), list(inputs))


def make_forward(model: ir.Model, **kwargs) -> Forward:
    """Build a :class:`Forward` for ``model`` (see its arguments)."""
    return Forward(model, **kwargs)


__all__ = ["Forward", "make_forward", "unsupported_nodes", "model_opset"]
