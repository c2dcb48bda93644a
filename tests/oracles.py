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


def lstm_packed(p, x, s):
    """nn.LSTM's own equations on its stacked weights: gates i, f, g, o by rows."""
    h, c = s["h"], s["c"]
    z = mv(p["weight_ih"], x) + p["bias_ih"] + mv(p["weight_hh"], h) + p["bias_hh"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c2 = sig(f) * c + sig(i) * np.tanh(g)
    return {"h": sig(o) * np.tanh(c2), "c": c2}


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


def minimal_rnn(p, x, s):
    h = s["h"]
    z = np.tanh(mv(p["W_x"], x) + p["b_z"])
    u = sig(mv(p["U_h"], h) + mv(p["U_z"], z) + p["b_u"])
    return {"h": u * h + (1 - u) * z}


def rnn(activation):
    def step(p, x, s):
        return {"h": activation(mv(p["W_ih"], x) + p["b_ih"] + mv(p["W_hh"], s["h"]) + p["b_hh"])}
    return step


def indrnn(p, x, s):
    return {"h": np.maximum(mv(p["W"], x) + p["u"] * s["h"] + p["b"], 0)}


# -- cells with dropout or zoneout: masks from Philox-4x32-10, written out here ------------

def philox_first_word(counter, key):
    """Philox-4x32-10 (Salmon et al. 2011) of counters (four arrays), first output word."""
    c = [np.asarray(w, np.uint64) for w in np.broadcast_arrays(*counter)]
    k = [np.uint64(key[0]), np.uint64(key[1])]
    low = np.uint64(0xFFFFFFFF)
    for r in range(10):
        if r:
            k = [(k[0] + np.uint64(0x9E3779B9)) & low, (k[1] + np.uint64(0xBB67AE85)) & low]
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k[0], p1 & low,
             (p0 >> np.uint64(32)) ^ c[3] ^ k[1], p0 & low]
    return c[0]


def hits(seed, site, p, t, shape, per_sequence=False):
    """Where the mask of random call `site` hits, as lstmc's README defines masks:
    counter (unit, row, step or 0xFFFFFFFF, site), key (seed low, seed high)."""
    rows, units = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    step = 0xFFFFFFFF if per_sequence else t
    word = philox_first_word((units, rows, step, site), (seed & 0xFFFFFFFF, seed >> 32))
    return (word >> np.uint64(8)) < round(p * 2**24)


def zoneout_lstm(p, x, s, draw=None):
    h, c = s["h"], s["c"]
    z = {g: mv(p["W_i" + g], x) + mv(p["W_h" + g], h) + p["b_" + g] for g in "ifgo"}
    c_new = sig(z["f"]) * c + sig(z["i"]) * np.tanh(z["g"])
    h_new = sig(z["o"]) * np.tanh(c_new)
    if draw is None:  # inference: the expectation
        return {"h": 0.05 * h + 0.95 * h_new, "c": 0.15 * c + 0.85 * c_new}
    return {"h": np.where(draw(1, 0.05), h, h_new), "c": np.where(draw(0, 0.15), c, c_new)}


def awd_lstm(p, x, s, draw=None):
    keep = 1.0 if draw is None else np.where(draw(0, 0.25, True), 0.0, 1.0 / 0.75)
    h, c = s["h"], s["c"]
    hd = h * keep
    z = {g: mv(p["W_i" + g], x) + mv(p["W_h" + g], hd) + p["b_" + g] for g in "ifgo"}
    c2 = sig(z["f"]) * c + sig(z["i"]) * np.tanh(z["g"])
    return {"h": sig(z["o"]) * np.tanh(c2), "c": c2}


def antisymmetric_rnn(p, x, s):
    """Chang et al. 2019, eq. (12), eps = gamma = 0.01."""
    W = p["W"]
    A = W - W.T - 0.01 * np.eye(W.shape[0])
    h = s["h"]
    return {"h": h + 0.01 * np.tanh(mv(A, h) + mv(p["V"], x) + p["b"])}


def phased_lstm(p, x, s, ts):
    """Neil et al. 2016, eqs. (1), (2), (4), (6)-(11): the peephole gates, the time gate
    k of the timestamp ts (B, 1) with period tau, shift s, open ratio r_on, leak 0.001."""
    h, c = s["h"], s["c"]
    i = sig(mv(p["W_xi"], x) + mv(p["W_hi"], h) + p["w_ci"] * c + p["b_i"])
    f = sig(mv(p["W_xf"], x) + mv(p["W_hf"], h) + p["w_cf"] * c + p["b_f"])
    c_tilde = f * c + i * np.tanh(mv(p["W_xc"], x) + mv(p["W_hc"], h) + p["b_c"])
    o = sig(mv(p["W_xo"], x) + mv(p["W_ho"], h) + p["w_co"] * c_tilde + p["b_o"])
    h_tilde = o * np.tanh(c_tilde)
    phi = np.remainder(ts - p["s"], p["tau"]) / p["tau"]
    r_on = p["r_on"]
    k = np.where(phi < r_on / 2, 2 * phi / r_on,
                 np.where(phi < r_on, 2 - 2 * phi / r_on, 0.001 * phi))
    return {"h": k * h_tilde + (1 - k) * h, "c": k * c_tilde + (1 - k) * c}


def slstm(p, x, s):
    """Beck et al. 2024, sLSTM (exponential gates, stabilizer m, normalizer n) with the
    recurrent matrices block-diagonal over the heads: R_g holds (NH, H/NH, H/NH) blocks."""
    h, c, n, m = s["h"], s["c"], s["n"], s["m"]
    pre = {}
    for g in "zifo":
        blocks = p["R_" + g]
        dh = blocks.shape[1]
        rec = np.concatenate([mv(blocks[k], h[:, k * dh:(k + 1) * dh])
                              for k in range(blocks.shape[0])], axis=1)
        pre[g] = mv(p["W_" + g], x) + rec + p["b_" + g]
    m2 = np.maximum(pre["f"] + m, pre["i"])
    i, f = np.exp(pre["i"] - m2), np.exp(pre["f"] + m - m2)
    c2 = f * c + i * np.tanh(pre["z"])
    n2 = f * n + i
    return {"h": sig(pre["o"]) * (c2 / n2), "c": c2, "n": n2, "m": m2}


RANDOM = {zoneout_lstm, awd_lstm}  # steps that take `draw(site, p, per_sequence=False)`


STEPS = {
    "lstm": lstm,
    "lstm_packed": lstm_packed,
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
    "minimal_rnn": minimal_rnn,
    "rnn_tanh": rnn(np.tanh),
    "rnn_relu": rnn(lambda z: np.maximum(z, 0)),
    "indrnn": indrnn,
    "zoneout_lstm": zoneout_lstm,
    "awd_lstm": awd_lstm,
    "antisymmetric_rnn": antisymmetric_rnn,
    "phased_lstm": phased_lstm,
}


def run(step, params, x, state, output="h", seed=None, inputs=None):
    """The oracle over a sequence: (y (T, B, n), final state). Steps with masks draw
    them from `seed` (None: inference, their expectations); `inputs` (T, B, n) arrays by
    name: a cell's inputs after the first, given to the step by keyword."""
    ys = []
    for t in range(x.shape[0]):
        if inputs:
            state = step(params, x[t], state, **{n: v[t] for n, v in inputs.items()})
            ys.append(state[output])
            continue
        if step in RANDOM:
            shape = state[output].shape
            draw = None if seed is None else (
                lambda site, p, per_sequence=False, t=t: hits(seed, site, p, t, shape,
                                                              per_sequence))
            state = step(params, x[t], state, draw)
        else:
            state = step(params, x[t], state)
        ys.append(state[output])
    return np.stack(ys), state
