"""Independent oracles: each shipped cell written by hand as a plain NumPy step, straight
from the equations in VARIANTS.md and the papers, sharing no code with lstmc."""
from __future__ import annotations

import numpy as np


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def ln(z, eps=1e-5):
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return (z - mu) / np.sqrt(var + eps)


def mv(W, v):
    """W @ v for every row of v."""
    return v @ W.T


def lstm(p, x, s):
    h, c = s["h"], s["c"]
    i = sig(mv(p["W_ii"], x) + p["b_ii"] + mv(p["W_hi"], h) + p["b_hi"])
    f = sig(mv(p["W_if"], x) + p["b_if"] + mv(p["W_hf"], h) + p["b_hf"])
    g = np.tanh(mv(p["W_ig"], x) + p["b_ig"] + mv(p["W_hg"], h) + p["b_hg"])
    o = sig(mv(p["W_io"], x) + p["b_io"] + mv(p["W_ho"], h) + p["b_ho"])
    c2 = f * c + i * g
    return {"h": o * np.tanh(c2), "c": c2}


def lstmp(p, x, s):
    new = lstm(p, x, s)
    return {"h": mv(p["W_hr"], new["h"]), "c": new["c"]}


def _gates(p, x, h, names):
    return {n: mv(p["W_" + n], x) + mv(p["U_" + n], h) + p["b_" + n] for n in names}


def peephole(p, x, s, *, input_gate=True, forget_gate=True, output_gate=True,
             input_act=True, output_act=True, coupled=False):
    """The vanilla LSTM of Greff et al. with their switches for the variants."""
    h, c = s["h"], s["c"]
    z = _gates(p, x, h, [n for n in "ifgo" if "W_" + n in p])
    f = sig(z["f"] + p["p_f"] * c) if forget_gate else 1.0
    if coupled:
        i = 1.0 - f
    else:
        i = sig(z["i"] + p["p_i"] * c) if input_gate else 1.0
    g = np.tanh(z["g"]) if input_act else z["g"]
    c2 = f * c + i * g
    o = sig(z["o"] + p["p_o"] * c2) if output_gate else 1.0
    return {"h": o * (np.tanh(c2) if output_act else c2), "c": c2}


def fgr(p, x, s):
    h, c, i0, f0, o0 = s["h"], s["c"], s["i"], s["f"], s["o"]
    z = _gates(p, x, h, "ifgo")
    rec = lambda g: mv(p[f"R_{g}i"], i0) + mv(p[f"R_{g}f"], f0) + mv(p[f"R_{g}o"], o0)  # noqa
    i = sig(z["i"] + rec("i") + p["p_i"] * c)
    f = sig(z["f"] + rec("f") + p["p_f"] * c)
    g = np.tanh(z["g"])
    c2 = f * c + i * g
    o = sig(z["o"] + rec("o") + p["p_o"] * c2)
    return {"h": o * np.tanh(c2), "c": c2, "i": i, "f": f, "o": o}


def lstm1997(p, x, s):
    h, c = s["h"], s["c"]
    z = _gates(p, x, h, "igo")
    c2 = c + sig(z["i"]) * (4 * sig(z["g"]) - 2)
    return {"h": sig(z["o"]) * (2 * sig(c2) - 1), "c": c2}


def layernorm_lstm(p, x, s):
    h, c = s["h"], s["c"]
    pre = {n: p["ax_" + n] * ln(mv(p["W_" + n], x)) + p["ah_" + n] * ln(mv(p["U_" + n], h))
           + p["b_" + n] for n in "ifgo"}
    c2 = sig(pre["f"]) * c + sig(pre["i"]) * np.tanh(pre["g"])
    return {"h": sig(pre["o"]) * np.tanh(p["ac"] * ln(c2) + p["bc"]), "c": c2}


def gru(p, x, s):
    h = s["h"]
    r = sig(mv(p["W_ir"], x) + p["b_ir"] + mv(p["W_hr"], h) + p["b_hr"])
    z = sig(mv(p["W_iz"], x) + p["b_iz"] + mv(p["W_hz"], h) + p["b_hz"])
    n = np.tanh(mv(p["W_in"], x) + p["b_in"] + r * (mv(p["W_hn"], h) + p["b_hn"]))
    return {"h": (1 - z) * n + z * h}


def gru_cho(p, x, s):
    h = s["h"]
    r = sig(mv(p["W_r"], x) + mv(p["U_r"], h) + p["b_r"])
    z = sig(mv(p["W_z"], x) + mv(p["U_z"], h) + p["b_z"])
    n = np.tanh(mv(p["W_n"], x) + mv(p["U_n"], r * h) + p["b_n"])
    return {"h": z * h + (1 - z) * n}


def mgu(p, x, s):
    h = s["h"]
    f = sig(mv(p["W_f"], x) + mv(p["U_f"], h) + p["b_f"])
    n = np.tanh(mv(p["W_n"], x) + mv(p["U_n"], f * h) + p["b_n"])
    return {"h": (1 - f) * h + f * n}


def rnn(activation):
    def step(p, x, s):
        return {"h": activation(mv(p["W_ih"], x) + p["b_ih"] + mv(p["W_hh"], s["h"]) + p["b_hh"])}
    return step


def indrnn(p, x, s):
    return {"h": np.maximum(mv(p["W"], x) + p["u"] * s["h"] + p["b"], 0)}


STEPS = {
    "lstm": lstm,
    "lstmp": lstmp,
    "peephole_lstm": peephole,
    "greff/nig": lambda p, x, s: peephole(p, x, s, input_gate=False),
    "greff/nfg": lambda p, x, s: peephole(p, x, s, forget_gate=False),
    "greff/nog": lambda p, x, s: peephole(p, x, s, output_gate=False),
    "greff/niaf": lambda p, x, s: peephole(p, x, s, input_act=False),
    "greff/noaf": lambda p, x, s: peephole(p, x, s, output_act=False),
    "greff/np": lambda p, x, s: peephole({**p, "p_i": 0, "p_f": 0, "p_o": 0}, x, s),
    "greff/cifg": lambda p, x, s: peephole(p, x, s, coupled=True),
    "greff/fgr": fgr,
    "lstm1997": lstm1997,
    "layernorm_lstm": layernorm_lstm,
    "gru": gru,
    "gru_cho": gru_cho,
    "mgu": mgu,
    "rnn_tanh": rnn(np.tanh),
    "rnn_relu": rnn(lambda z: np.maximum(z, 0)),
    "indrnn": indrnn,
}


def run(step, params, x, state, output="h"):
    """The oracle over a sequence: (y (T, B, n), final state)."""
    ys = []
    for t in range(x.shape[0]):
        state = step(params, x[t], state)
        ys.append(state[output])
    return np.stack(ys), state
