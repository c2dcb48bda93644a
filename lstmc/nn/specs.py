"""The shipped specs of the PyTorch-compatible cells, as text: lstmc.nn works from an
installed package, where the repository's specs/ folder is absent. They are the files
specs/{lstm,lstmp,gru,rnn_tanh,rnn_relu}.lstm verbatim (tests/test_nn_modules.py checks
that), so the disk cache shares their compiled code with lstmc.compile of the files."""

SPECS = {
    "lstm": (
        "# Standard LSTM, as PyTorch's nn.LSTM and cuDNN compute it: Hochreiter & Schmidhuber 1997\n"  # noqa: E501
        '# with the forget gate of Gers et al. 2000, no peepholes. Parameter names, the two biases\n'  # noqa: E501
        '# per gate and the gate order i, f, g, o follow the nn.LSTM documentation, so\n'
        '# lstmc.params_from_torch / params_to_torch convert its state_dict.\n'
        'cell lstm(x: I) -> h: H {\n'
        '  state c: H\n'
        '  param W_ii, W_if, W_ig, W_io      # input weights       (weight_ih_l0)\n'
        '  param W_hi, W_hf, W_hg, W_ho      # recurrent weights   (weight_hh_l0)\n'
        '  param b_ii, b_if, b_ig, b_io      # input biases        (bias_ih_l0)\n'
        '  param b_hi, b_hf, b_hg, b_ho      # recurrent biases    (bias_hh_l0)\n'
        '\n'
        '  i  = sigmoid(W_ii @ x + b_ii + W_hi @ h + b_hi)\n'
        '  f  = sigmoid(W_if @ x + b_if + W_hf @ h + b_hf)\n'
        '  g  = tanh(W_ig @ x + b_ig + W_hg @ h + b_hg)\n'
        '  o  = sigmoid(W_io @ x + b_io + W_ho @ h + b_ho)\n'
        "  c' = f * c + i * g\n"
        "  h' = o * tanh(c')\n"
        '}\n'
    ),
    "lstmp": (
        '# LSTM with a recurrent projection, LSTMP: Sak, Senior & Beaufays 2014; PyTorch nn.LSTM\n'
        '# with proj_size = P. The projected h (size P < H) is what recurs; a second product inside\n'  # noqa: E501
        '# the step. Names and gate order as in the nn.LSTM documentation.\n'
        'cell lstmp(x: I) -> h: P {\n'
        '  state c: H\n'
        '  param W_ii, W_if, W_ig, W_io      # weight_ih_l0  [4H, I]\n'
        '  param W_hi, W_hf, W_hg, W_ho      # weight_hh_l0  [4H, P]\n'
        '  param b_ii, b_if, b_ig, b_io      # bias_ih_l0\n'
        '  param b_hi, b_hf, b_hg, b_ho      # bias_hh_l0\n'
        '  param W_hr                        # weight_hr_l0  [P, H]\n'
        '\n'
        '  i  = sigmoid(W_ii @ x + b_ii + W_hi @ h + b_hi)\n'
        '  f  = sigmoid(W_if @ x + b_if + W_hf @ h + b_hf)\n'
        '  g  = tanh(W_ig @ x + b_ig + W_hg @ h + b_hg)\n'
        '  o  = sigmoid(W_io @ x + b_io + W_ho @ h + b_ho)\n'
        "  c' = f * c + i * g\n"
        "  h' = W_hr @ (o * tanh(c'))\n"
        '}\n'
    ),
    "gru": (
        "# GRU as PyTorch's nn.GRU and cuDNN compute it (ONNX linear_before_reset = 1): the reset\n"
        '# gate applies after the recurrent product. Cho et al. 2014, in the cuDNN form. Names and\n'  # noqa: E501
        '# gate order r, z, n as in the nn.GRU documentation.\n'
        'cell gru(x: I) -> h: H {\n'
        '  param W_ir, W_iz, W_in            # weight_ih_l0\n'
        '  param W_hr, W_hz, W_hn            # weight_hh_l0\n'
        '  param b_ir, b_iz, b_in            # bias_ih_l0\n'
        '  param b_hr, b_hz, b_hn            # bias_hh_l0\n'
        '\n'
        '  r  = sigmoid(W_ir @ x + b_ir + W_hr @ h + b_hr)\n'
        '  z  = sigmoid(W_iz @ x + b_iz + W_hz @ h + b_hz)\n'
        '  n  = tanh(W_in @ x + b_in + r * (W_hn @ h + b_hn))\n'
        "  h' = (1 - z) * n + z * h\n"
        '}\n'
    ),
    "rnn_tanh": (
        '# Elman RNN with tanh, as PyTorch\'s nn.RNN(nonlinearity="tanh"); names as its documentation.\n'  # noqa: E501
        'cell rnn_tanh(x: I) -> h: H {\n'
        '  param W_ih, W_hh, b_ih, b_hh\n'
        "  h' = tanh(W_ih @ x + b_ih + W_hh @ h + b_hh)\n"
        '}\n'
    ),
    "rnn_relu": (
        '# Elman RNN with ReLU, as PyTorch\'s nn.RNN(nonlinearity="relu"); names as its documentation.\n'  # noqa: E501
        'cell rnn_relu(x: I) -> h: H {\n'
        '  param W_ih, W_hh, b_ih, b_hh\n'
        "  h' = relu(W_ih @ x + b_ih + W_hh @ h + b_hh)\n"
        '}\n'
    ),
}
