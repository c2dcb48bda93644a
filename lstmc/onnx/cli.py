"""`lstmc export` and `lstmc import-onnx`, registered by lstmc's CLI through
`register(commands)`. Nothing from onnx is imported here at module level, so `lstmc
--help` works without the onnx extra; a command that needs it says how to install it."""
from __future__ import annotations

import argparse
import os
import re

import numpy as np

from .errors import OnnxError


def _opset(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an opset number, got '{text}'") from None


def register(commands) -> None:
    from ..cli import SPEC_HELP, _add_size_options, _positive_int, _seed
    from .exporter import DEFAULT_OPSET, MIN_OPSET

    exp = commands.add_parser(
        "export", help="export a cell as an ONNX model (pip install 'lstmc[onnx]')",
        description="Export a spec's cell as an ONNX model: input X, optional sequence_lens "
                    "and initial_<state>; outputs Y and final_<state>. Cells that are "
                    "exactly an ONNX LSTM, GRU or RNN operator export as that operator, "
                    "every other cell as a Scan loop.")
    exp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    exp.add_argument("-o", "--output", required=True, metavar="FILE.onnx",
                     help="where to write the model")
    _add_size_options(exp, default_sizes=False)
    exp.add_argument("--num-layers", type=_positive_int, default=1, metavar="L")
    exp.add_argument("--bidirectional", action="store_true")
    exp.add_argument("--direction", choices=["forward", "reverse"], default="forward",
                     help="reverse: one direction that reads the sequences backwards")
    exp.add_argument("--reverse-cell", metavar="NAME",
                     help="with --bidirectional: the reverse direction's cell, from the "
                          "same spec (default: the forward direction's)")
    exp.add_argument("--batch-first", action="store_true", help="X and Y are (B, T, F)")
    exp.add_argument("--params", metavar="FILE.npz",
                     help="the parameters, one array per name (lstmc's names; l0., "
                          "l0_reverse., l1. ... prefixes for stacks); default: "
                          "lstmc's initialization with --seed")
    exp.add_argument("--seed", type=_seed, default=0,
                     help="seed of the initial parameters without --params, in 0..2**64-1 "
                          "(default 0)")
    exp.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    exp.add_argument("--opset", type=_opset, default=DEFAULT_OPSET,
                     help=f"the ONNX opset ({MIN_OPSET} or newer; default {DEFAULT_OPSET})")
    exp.add_argument("--scan", action="store_true",
                     help="export as Scan even a cell that is an ONNX operator")
    exp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show tracebacks of errors")
    exp.set_defaults(handler=cmd_export)

    imp = commands.add_parser(
        "import-onnx", help="write each LSTM, GRU and RNN node of an ONNX model as a spec "
                            "and its parameters (pip install 'lstmc[onnx]')",
        description="Import every LSTM, GRU and RNN node of an ONNX model: for each, write "
                    "NAME.lstm (the spec, every attribute honoured) and NAME.npz (its "
                    "parameters, as `lstmc export --params` reads them) into DIR.")
    imp.add_argument("model", metavar="MODEL.onnx")
    imp.add_argument("-o", "--output", required=True, metavar="DIR")
    imp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show tracebacks of errors")
    imp.set_defaults(handler=cmd_import)


def _read_params(path: str) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise OnnxError(f"--params {path}: cannot read it: {exc.strerror or exc}") from None
    except Exception as exc:  # zipfile, pickle and format errors: not an npz of arrays
        raise OnnxError(f"--params {path}: not an .npz file of arrays ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise OnnxError(f"--params {path}: an .npz file of named arrays is needed, not a "
                        "single array")
    with data:
        try:
            return {name: data[name] for name in data.files}
        except Exception as exc:  # an object array, a damaged member
            raise OnnxError(f"--params {path}: cannot read its arrays ({exc})") from None


def cmd_export(args) -> int:
    import lstmc

    from ..cli import _sizes, spec_source
    from .exporter import export, require_onnx

    require_onnx()
    options = {}
    if args.reverse_cell is not None:
        options["reverse_cell"] = args.reverse_cell
    cell = lstmc.compile(spec_source(args.spec), args.input_size, args.hidden_size,
                         target="reference", dtype=args.dtype, cell=args.cell,
                         num_layers=args.num_layers, bidirectional=args.bidirectional,
                         direction=args.direction, batch_first=args.batch_first,
                         **options, **_sizes(args))
    params = _read_params(args.params) if args.params else cell.init_params(args.seed)
    model = export(cell, params, args.output, opset=args.opset, native=not args.scan)
    kinds = [n.op_type for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN",
                                                                  "Scan")]
    described = ", ".join(sorted({k if k == "Scan" else f"the {k} operator" for k in kinds}))
    print(f"wrote {args.output}: cell {cell.name} as {described} "
          f"({len(kinds)} node(s), opset {args.opset})")
    return 0


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "node"


def cmd_import(args) -> int:
    from .exporter import require_onnx
    from .importer import load

    require_onnx()
    nodes = load(args.model, target="reference")
    out = args.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise OnnxError(f"cannot write to {out}: it exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise OnnxError(f"cannot create {out}: {exc.strerror or exc}") from None
    used: set[str] = set()
    for node in nodes:
        base = _file_name(node.name)
        stem, k = base, 1
        while base in used:
            k += 1
            base = f"{stem}_{k}"
        used.add(base)
        form = node.form
        params = dict(node.params)
        flags = [f"--input-size {form.input_size}", f"--hidden-size {form.hidden_size}"]
        if form.directions == ("forward",):  # a plain cell: names without the stack prefix
            params = {n.split(".", 1)[1]: v for n, v in params.items()}
        elif form.directions == ("reverse",):
            flags.append("--direction reverse")
        else:
            flags.append("--bidirectional")
            cells = re.findall(r"^cell (\w+)", node.spec, re.M)
            if len(cells) == 2:
                flags.append(f"--cell {cells[0]} --reverse-cell {cells[1]}")
        if form.layout == 1:
            flags.append("--batch-first")
        spec_file = os.path.join(out, base + ".lstm")
        params_file = os.path.join(out, base + ".npz")
        try:
            with open(spec_file, "w", encoding="utf-8") as f:
                f.write(node.spec)
            # mypy lets **params stand for allow_pickle too; its keys are parameter names
            np.savez(params_file, **params)  # type: ignore[arg-type]
        except OSError as exc:
            raise OnnxError(f"cannot write into {out}: {exc.strerror or exc}") from None
        print(f"{node.op} node '{node.name}': wrote {spec_file} and {params_file} "
              f"(lstmc export {spec_file} {' '.join(flags)} --params {params_file} "
              f"-o model.onnx)")
        if node.constants:  # not parameters: the exported model takes them as inputs
            print(f"  note: the model holds the node's {', '.join(node.constants)} as "
                  "constants, which the spec and parameters do not carry: feed them to "
                  "the exported model's inputs of the same names (states as (D, B, H))")
    return 0
