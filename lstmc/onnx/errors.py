"""The error the ONNX bridge raises for a model or node it cannot take."""
from __future__ import annotations

from ..errors import CompileError


class OnnxError(CompileError):
    """An ONNX model, node or attribute lstmc cannot import or export; the message names
    the node and the attribute."""
