"""A small helper that writes ONNX nodes and initializers with unique names, for the main
graph and for the Scan bodies inside it (names are unique across both: ONNX forbids a
subgraph to shadow an outer name). The onnx package is imported by the caller first."""
from __future__ import annotations

import itertools

import numpy as np


class Builder:
    """Nodes and initializers of one ONNX graph; `counter` is shared with the builders of
    its subgraphs so every name is unique in the model."""

    def __init__(self, dtype: np.dtype, counter=None):
        from onnx import helper

        self.dtype = np.dtype(dtype)
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.counter = counter if counter is not None else itertools.count()
        self.nodes: list = []
        self.initializers: list = []
        self._constants: dict[tuple, str] = {}

    def sub(self) -> Builder:
        """A builder for a subgraph (a Scan body) of this graph."""
        return Builder(self.dtype, self.counter)

    def fresh(self, hint: str) -> str:
        return f"{hint}__{next(self.counter)}"

    def node(self, op: str, inputs: list[str], hint: str | None = None, outputs: int = 1,
             names: list[str] | None = None, node_name: str | None = None, **attributes):
        """Add a node; returns its output name (or the list of names when outputs > 1)."""
        from onnx import helper

        names = names or [self.fresh(hint or op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=node_name,
                                           **attributes))
        return names[0] if len(names) == 1 and outputs == 1 else names

    def initializer(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def constant(self, value, dtype=None) -> str:
        """An initializer holding `value` (in this graph's float dtype unless `dtype`),
        one per distinct value and dtype."""
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(array, self.fresh("const"))
        return self._constants[key]

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (shapes, axes, slice bounds)."""
        return self.constant(list(values), np.int64)
