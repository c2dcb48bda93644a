"""lstmc.onnx: any cell exported as an ONNX model (native LSTM/GRU/RNN operators or a
Scan), and ONNX's LSTM, GRU and RNN nodes imported as lstmc cells (optional extra `onnx`).
The onnx package is imported only inside the functions that need it."""
from .errors import OnnxError
from .exporter import export
from .importer import ImportedNode, load

__all__ = ["ImportedNode", "OnnxError", "export", "load"]
