"""lstmc in PyTorch: torch.library custom ops and nn.Module drop-ins.

- `Recurrent(spec, input_size, hidden_size, ...)`: any spec as a module.
- `LSTM`, `GRU`, `RNN`: nn.LSTM / nn.GRU / nn.RNN drop-ins (same constructor, forward,
  parameter names and state_dict).
- `RecurrentCell(spec, ...)`: one step at a time (the nn.LSTMCell convention).
- `torch.ops.lstmc.forward` / `torch.ops.lstmc.backward`: the ops underneath.

Importing this package imports torch; the rest of lstmc never does.
"""
from .cell import RecurrentCell
from .ops import DoubleBackwardError
from .recurrent import Recurrent
from .standard import GRU, LSTM, RNN

__all__ = ["GRU", "LSTM", "RNN", "DoubleBackwardError", "Recurrent", "RecurrentCell"]
