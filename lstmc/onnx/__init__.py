"""lstmc.onnx: ONNX's LSTM, GRU and RNN nodes imported as lstmc cells (optional extra
`onnx`). The onnx package is imported only inside the functions that need it."""
from .errors import OnnxError
from .importer import ImportedNode, load

__all__ = ["ImportedNode", "OnnxError", "load"]
