"""The `lstmc` command line: check, compile, gradcheck.

Errors print as `path:line:col: error: ...` with no traceback (`--debug` shows one);
exit status 0 on success, 1 on an error in the input or a failed check, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import pathlib
import sys
import traceback

from lstmc_runtime.dtypes import DTYPES

from . import __version__
from .errors import BackendError, CompileError, LstmcError, SpecError, SpecSyntaxError
from .targets import TARGETS, artifact_targets


def _size_assignment(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N a positive integer, got '{text}'")
    return name, _positive_int(value)


MAX_COUNT = 1 << 24  # steps, batch rows, sizes, layers: far above use, far below overflow


def _int_in(low: int, high: int, kind: str, bounds: str):
    """An argparse type: an integer in low..high; `kind` and `bounds` word its errors."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {bounds}, got {value}")
        return value
    return parse


MAX_SEED = (1 << 64) - 1  # mask seeds are 64-bit (README, "Dropout and zoneout")
_positive_int = _int_in(1, MAX_COUNT, "a positive integer", f"1..{MAX_COUNT}")
_seed = _int_in(0, MAX_SEED, "an integer", "0..2**64-1")


def _tolerance(text: str) -> float:
    """An argparse type: a finite positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got '{text}'")
    return value


STAGES = ("ir", "ir-backward", "ir-unfused", "llvm", "asm", "cuda")


def _stage_list(text: str) -> list[str]:
    stages = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage {', '.join(unknown) or repr(text)} (choose from {', '.join(STAGES)})")
    return stages


def _directory(text: str) -> str:
    """An argparse type: a directory path; an empty one would silently mean "no -o"."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory, got ''")
    return text


# The stages an artifact of each target holds beside its own files (the GPU kernels are
# its kernel source); others would be dropped without a word, so asking is an error.
ARTIFACT_STAGES = {"cpu": {"ir", "ir-backward", "llvm", "asm"},
                   "cuda": {"ir", "ir-backward", "cuda"},
                   "opencl": {"ir", "ir-backward", "cuda"}}


def _check_artifact_stages(parser: argparse.ArgumentParser, args) -> None:
    if args.output is None or not args.emit:
        return
    held = ARTIFACT_STAGES.get(args.target, set(STAGES))
    unwritten = [s for s in args.emit if s not in held]
    if unwritten:
        parser.error(f"argument --emit: a {args.target} artifact cannot hold stage "
                     f"{', '.join(unwritten)} (with -o: {', '.join(sorted(held))})")


SPEC_HELP = "a .lstm file, or - for standard input"


def spec_source(text: str):
    """A SPEC argument's source, read once: `-` is standard input, as compilers read it
    (a spec's path otherwise, whatever its name holds)."""
    from .frontend.source import MAX_SPEC_BYTES, decode, read_source

    if text == "-":
        if sys.stdin is None:  # started with standard input closed
            raise SpecSyntaxError("cannot read the spec from standard input: it is closed")
        try:
            data = sys.stdin.buffer.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecSyntaxError(f"cannot read the spec from standard input: "
                                  f"{exc.strerror}") from None
        return decode(data, "<stdin>")
    return read_source(pathlib.Path(text))


DEFAULT_INPUT_SIZE, DEFAULT_HIDDEN_SIZE = 3, 4  # gradcheck's, where the user gives none


def _add_size_options(parser: argparse.ArgumentParser, default_sizes: bool) -> None:
    # The defaults are applied by the command once it knows the spec (see _default_sizes).
    parser.add_argument("--input-size", type=_positive_int, default=None, metavar="N",
                        help="the input's size" + (f" (default: {DEFAULT_INPUT_SIZE}; for "
                                                   "an input of size H, the hidden size)"
                                                   if default_sizes else ""))
    parser.add_argument("--hidden-size", type=_positive_int, default=None, metavar="N",
                        help="the size H" + (f" (default: {DEFAULT_HIDDEN_SIZE}, or the "
                                             "input size for an input of size H)"
                                             if default_sizes else ""))
    parser.add_argument("--size", type=_size_assignment, action="append", default=[],
                        metavar="NAME=N", help="any other named size, e.g. --size P=2")
    parser.add_argument("--cell", help="which cell, when the spec defines several")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmc",
        description="Compile recurrent cells written in the .lstm spec language.")
    parser.add_argument("--version", action="version", version=f"lstmc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser("check", help="verify specs and summarize their cells",
                                description="Parse and check specs; print one line per cell.")
    check.add_argument("specs", nargs="+", metavar="SPEC", help=SPEC_HELP)
    check.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")

    comp = commands.add_parser(
        "compile", help="compile a spec: print its stages, or write an artifact",
        description="Compile a spec. Without -o, print the stages named by --emit "
                    "(default: the fused IR). With -o DIR, write an artifact that "
                    "lstmc_runtime.load(DIR) runs, plus the stages named by --emit.")
    comp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    comp.add_argument("-o", "--output", type=_directory, metavar="DIR",
                      help="write the artifact to DIR")
    comp.add_argument("--target", default="cpu", choices=list(artifact_targets()),
                      help="what the artifact runs on (default: cpu); cuda writes the "
                           "kernels as a .cu file, plus cubin and PTX for sm_80 and sm_90 "
                           "where NVRTC is installed")
    comp.add_argument("--dtype", default="float32", choices=list(DTYPES))
    comp.add_argument("--emit", type=_stage_list, default=None, metavar="STAGES",
                      help="comma-separated stages: ir (fused forward IR), ir-backward "
                           "(with the backward step), ir-unfused (before fusion), llvm "
                           "(optimized LLVM IR), asm (host assembly), cuda (the GPU "
                           "kernels in their portable dialect); llvm, asm and cuda need "
                           "the sizes")
    comp.add_argument("--cpu", default="host", metavar="NAME",
                      help="the CPU the artifact is for: host (default: this CPU, all its "
                           "features) or an LLVM CPU name such as x86-64-v3 for portability")
    comp.add_argument("--num-layers", type=_positive_int, default=1, metavar="L")
    comp.add_argument("--bidirectional", action="store_true")
    comp.add_argument("--batch-first", action="store_true")
    _add_size_options(comp, default_sizes=False)
    comp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                      help="show tracebacks of errors")
    comp.set_defaults(check_options=lambda args: _check_artifact_stages(comp, args))

    grad = commands.add_parser(
        "gradcheck", help="check the generated backward pass by finite differences",
        description="Compare the generated gradients of every input, parameter and initial "
                    "state with central finite differences in float64.")
    grad.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    _add_size_options(grad, default_sizes=True)
    grad.add_argument("--steps", type=_positive_int, default=4, help="sequence length (default: 4)")
    grad.add_argument("--batch", type=_positive_int, default=2, help="batch size (default: 2)")
    grad.add_argument("--seed", type=_seed, default=0,
                      help="seed of the random inputs, parameters and masks, in 0..2**64-1 "
                           "(default: 0)")
    grad.add_argument("--tolerance", type=_tolerance, default=1e-6,
                      help="largest relative error accepted (default: 1e-6)")
    grad.add_argument("--target", default="reference",
                      choices=[n for n, t in TARGETS.items() if "float64" in t.dtypes],
                      help="whose backward pass to check: the reference executor's "
                           "(default) or the native code's")
    grad.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                      help="show tracebacks of errors")
    cache = commands.add_parser(
        "cache", help="show or clear the cache of compiled cells",
        description="The disk cache of compiled cells ($LSTMC_CACHE_DIR, default "
                    "~/.cache/lstmc): `info` (the default) counts its entries and their "
                    "size, `dir` prints where it is, `clear` removes every entry (the next "
                    "compile of each cell builds it again). Only lstmc's own entries are "
                    "counted or removed.")
    cache.add_argument("action", nargs="?", default="info", choices=["info", "dir", "clear"])
    cache.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
    for module in EXTENSION_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def _sizes(args) -> dict:
    sizes: dict[str, int] = {}
    for name, value in args.size:
        if sizes.get(name, value) != value:
            raise CompileError(f"--size {name} is given twice: {sizes[name]} and {value}")
        sizes[name] = value
    return sizes


def cmd_check(args) -> int:
    from .driver import check_spec
    from .passes.pipeline import lower

    failed = 0
    for path in args.specs:  # every spec is checked; each bad one reports its error
        try:
            for cell in check_spec(spec_source(path)):
                print(f"{path}: {summarize(lower(cell))}")
        except SpecError as exc:
            if args.debug:
                traceback.print_exc()
            print(exc, file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def summarize(program) -> str:
    info = program.info
    states = ", ".join(f"{n}: {s}" for n, s in info.states.items())
    params = " ".join(f"{p}[{','.join(str(d) for d in info.param_shape(p))}]" for p in info.params)
    hoisted = ", ".join(f"{h.rows} @ {h.operand}" + (f" (prologue {h.level})" if h.level else "")
                        for h in program.hoisted) or "none"
    products = ", ".join(f"{p.size}x{p.attr.in_size}" for p in program.recurrent_products) or "none"
    stages = sum(1 for s in program.forward if s.kind == "product")
    out_size = info.states[info.output]
    inputs = ", ".join(f"{n}: {s}" for n, s in [info.input, *info.extra_inputs.items()])
    return (f"cell {info.name}({inputs}) -> {info.output}: {out_size}; "
            f"states {states}; {len(info.params)} params {params}; "
            f"hoisted products: {hoisted}; recurrent products per step: "
            f"{len(program.recurrent_products)} ({products}) in {stages} stage(s)")


def cmd_compile(args) -> int:
    from .api import bind_sizes, write_artifact_dir
    from .driver import check_spec, select_cell
    from .ir.graph import format_node
    from .passes.pipeline import format_program, lower, unfused_graph

    stages = args.emit or (["ir"] if args.output is None else [])
    if args.output is not None:
        write_artifact_dir(spec_source(args.spec), args.output, args.input_size, args.hidden_size,
                           target=args.target, dtype=args.dtype, cell=args.cell,
                           num_layers=args.num_layers, bidirectional=args.bidirectional,
                           batch_first=args.batch_first, cpu=args.cpu,
                           emit=frozenset(s.replace("ir-backward", "ir") for s in stages),
                           **_sizes(args))
        print(f"wrote {args.output}/manifest.json")
        if args.target == "cuda":
            _report_cuda_artifact(args.output)
        return 0
    cell = select_cell(check_spec(spec_source(args.spec)), args.cell)
    program = lower(cell)
    sizes = None
    if args.input_size or args.hidden_size or args.size or {"llvm", "asm", "cuda"} & set(stages):
        sizes = bind_sizes(program, args.input_size, args.hidden_size, _sizes(args))
        print("; sizes: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
        if program.info.has_heads:  # one product per head: the head count shapes the step
            program = lower(cell, sizes)
    for stage in stages:
        if stage == "ir-unfused":
            _, graph = unfused_graph(cell)
            for node in graph.live_nodes():
                print(format_node(node))
            for name, node in graph.outputs.items():
                print(f"{name}' = {node!r}")
        elif stage in ("ir", "ir-backward"):
            print(format_program(program, backward=stage == "ir-backward"))
        elif stage == "cuda":
            from .backends.gpu.kernels import generate as generate_kernels

            assert sizes is not None  # bound above for the cuda, llvm and asm stages
            print(generate_kernels(program, sizes)[0])
        else:
            from .backends.cpu import generate
            from .backends.llvm.toolchain import emit_assembly, optimize

            assert sizes is not None  # bound above for the cuda, llvm and asm stages
            module = optimize(generate(program, sizes, args.dtype)[0])
            print(str(module) if stage == "llvm" else emit_assembly(module))
    return 0


def _report_cuda_artifact(directory: str) -> None:
    """Each cell's binaries, registers and spills (a stack: each distinct layer's)."""
    import json
    import os

    def manifest(path: str) -> dict:
        with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)

    top = manifest(directory)
    cells = {name: os.path.join(directory, sub) for name, sub in top.get("cells", {}).items()}
    for label, path in (cells or {"": directory}).items():
        binaries = manifest(path).get("binaries")
        prefix = f"  {label}/" if label else "  "
        if not binaries:
            print(f"{prefix}kernels.cu only: NVRTC is not installed, so no cubin or PTX "
                  "(pip install 'nvidia-cuda-nvrtc==13.0.*' cuda-bindings)")
            continue
        for arch, files in binaries.items():
            spilled = sorted(k for k, v in files["spill_bytes"].items() if v)
            registers = ", ".join(f"{k} {v}" for k, v in sorted(files["registers"].items()))
            print(f"{prefix}{arch}: {files['cubin']}, {files['ptx']}; registers: {registers}; "
                  + (f"SPILLS in {', '.join(spilled)}" if spilled else "no spills"))


def _default_sizes(args, source) -> tuple[int | None, int | None]:
    """(input_size, hidden_size) with the defaults filled in where the user gave neither.
    An input of size H (`cell sru(x: H)`) has no size of its own: --input-size then sets H,
    and only H gets a default. A size given with --size (`--size H=8`, `--size I=5`) gets
    no default either."""
    from .driver import lower_spec

    input_size, hidden_size = args.input_size, args.hidden_size
    given = {name for name, _ in args.size}
    info = lower_spec(source, args.cell).info
    input_names = info.input[1].names
    if "H" in input_names:
        if input_size is None and hidden_size is None and "H" not in given:
            hidden_size = DEFAULT_HIDDEN_SIZE
        return input_size, hidden_size
    if input_size is None and input_names and not input_names & given:
        input_size = DEFAULT_INPUT_SIZE
    if hidden_size is None and "H" not in given:
        hidden_size = DEFAULT_HIDDEN_SIZE
    return input_size, hidden_size


def cmd_gradcheck(args) -> int:
    from .api import compile
    from .gradcheck import gradcheck

    # Read once: a second read of a pipe (/dev/stdin) is empty, of an edited file another spec.
    source = spec_source(args.spec)
    input_size, hidden_size = _default_sizes(args, source)
    cell = compile(source, input_size, hidden_size, dtype="float64",
                   cell=args.cell, target=args.target, **_sizes(args))
    result = gradcheck(cell, steps=args.steps, batch=args.batch, seed=args.seed)
    ok = result.passed(args.tolerance)
    sizes = ", ".join(f"{k}={v}" for k, v in cell.sizes.items())
    print(f"{args.spec}: cell {cell.name} ({sizes}): worst relative error {result.worst_error:.3e} "
          f"({result.worst_array}) over {len(result.errors)} arrays: "
          f"{'ok' if ok else 'FAILED'} (tolerance {args.tolerance:g})")
    if not ok:
        for label, error in result.errors.items():
            if not error <= args.tolerance:
                print(f"  {label}: {error:.3e}")
    return 0 if ok else 1


def cmd_cache(args) -> int:
    from . import cache

    root = cache.cache_root()
    if args.action == "dir":
        print(root)
        return 0
    if root.exists() and not root.is_dir():
        raise BackendError(f"the cache directory {root} is not a directory")
    if args.action == "clear":
        count, total = cache.clear(root)
        print(f"removed {count} entr{'y' if count == 1 else 'ies'} "
              f"({_mib(total)}) from {root}")
        return 0
    found = cache.inventory(root)
    sizes = {kind: sum(cache.size_of(p) for p in paths) for kind, paths in found.items()}
    print(f"cache directory: {root}")
    print(f"  compiled cells: {len(found['cells'])} ({_mib(sizes['cells'])})")
    print(f"  shared code:    {len(found['shared'])} ({_mib(sizes['shared'])})")
    if found["leftovers"]:
        print(f"  left by interrupted builds: {len(found['leftovers'])} "
              f"({_mib(sizes['leftovers'])})")
    return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


COMMANDS = {"check": cmd_check, "compile": cmd_compile, "gradcheck": cmd_gradcheck,
            "cache": cmd_cache}

# Commands of the optional extras. Each module defines `register(commands)`, which adds its
# subparsers with `set_defaults(handler=...)`; it must not import its extra's heavy
# dependencies (onnx, optuna, torch) at module level, so `lstmc --help` works without them.
EXTENSION_MODULES: list[str] = ["lstmc.lab.cli", "lstmc.onnx.cli"]


class OutputError(LstmcError):
    """Standard output cannot be written (a full disk, a closed descriptor)."""


class _CheckedOutput:
    """sys.stdout while a command runs: a failure to write it is the user's output lost,
    said so, not a compiler bug (a closed pipe stays a BrokenPipeError: see main)."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, method: str, *args):
        if self._stream is None:  # started with stdout closed (`lstmc ... >&-`)
            raise OutputError("cannot write to standard output: it is closed")
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a stream closed meanwhile
            reason = getattr(exc, "strerror", None) or exc
            raise OutputError(f"cannot write to standard output: {reason}") from None

    def write(self, text: str) -> int:
        return self._call("write", text)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _run(args) -> int:
    check_options = getattr(args, "check_options", None)
    if check_options is not None:  # option combinations argparse cannot see (exit 2)
        check_options(args)
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    stdout = sys.stdout
    sys.stdout = _CheckedOutput(stdout)  # type: ignore[assignment]
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed pipe or a full disk is found here, not at exit
        return status
    finally:
        sys.stdout = stdout


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return 130
    try:
        return _run(args)
    except OutputError as exc:
        if args.debug:
            traceback.print_exc()
        _silence_stdout()  # the interpreter's flush at exit would fail again
        print(f"lstmc: error: {exc}", file=sys.stderr)
        return 1
    except LstmcError as exc:
        if args.debug:
            traceback.print_exc()
        text = exc.cli_message if isinstance(exc, CompileError) else str(exc)
        print(text if isinstance(exc, SpecError) else f"lstmc: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`lstmc check ... | head -1`): quietly
        _silence_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE
    except MemoryError:
        if args.debug:
            traceback.print_exc()
        print("lstmc: error: out of memory (are the sizes, --steps or --batch too large?)",
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 (a compiler bug: say so plainly, no traceback)
        if args.debug:
            traceback.print_exc()
        else:
            print(f"lstmc: internal error: {type(exc).__name__}: {exc} (rerun with --debug "
                  "for a traceback)", file=sys.stderr)
        return 3


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit cannot fail on
    the closed pipe too (it would print 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout: nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
