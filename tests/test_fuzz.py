"""Fuzzing with a time budget (issue 10).

1. Grammar-aware mutations of the shipped specs (deletions, swaps, duplications, deep
   nesting, odd whitespace and line endings, huge numbers, stray punctuation), seeded, run
   through `lstmc check` and `lstmc compile --emit ir` in process: each run succeeds or
   ends in a located diagnostic; never an internal error (exit 3), never a traceback.
2. Random single-value edits of a CPU artifact's manifest, each loaded and run in a worker
   process (a crash fails the test instead of killing the run): each edited artifact is
   refused with an lstmc error, or gives results identical to the unedited one.

The budgets (seconds) are LSTMC_FUZZ_SPEC_SECONDS (default 40) and
LSTMC_FUZZ_MANIFEST_SECONDS (default 20); LSTMC_FUZZ_SEED picks the seed (default 0).
Each test records how many cases ran as a junit property; conftest prints them in the
run's summary."""
import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import SPECS_DIR
from lstmc_runtime.manifest import self_checksum

import lstmc
from lstmc.cli import main

SEED = int(os.environ.get("LSTMC_FUZZ_SEED", "0"))
SPEC_SECONDS = float(os.environ.get("LSTMC_FUZZ_SPEC_SECONDS", "40"))
MANIFEST_SECONDS = float(os.environ.get("LSTMC_FUZZ_MANIFEST_SECONDS", "20"))
TOKEN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*'?|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\S")
LOCATED = re.compile(r"^.+:\d+:\d+: error: ", re.MULTILINE)


def _report(record_property, what: str, counts: dict) -> None:
    record_property(what, json.dumps(counts))


# -- spec mutations ---------------------------------------------------------------------

def _tokens(text: str) -> list[re.Match]:
    return list(TOKEN.finditer(text))


def _splice(text: str, match: re.Match, new: str) -> str:
    return text[:match.start()] + new + text[match.end():]


def _delete_token(rng, text):
    tokens = _tokens(text)
    return _splice(text, rng.choice(tokens), "") if tokens else text


def _swap_tokens(rng, text):
    tokens = _tokens(text)
    if len(tokens) < 2:
        return text
    a, b = sorted(rng.sample(tokens, 2), key=lambda m: m.start())
    return (text[:a.start()] + b.group() + text[a.end():b.start()] + a.group()
            + text[b.end():])


def _duplicate_line(rng, text):
    lines = text.split("\n")
    k = rng.randrange(len(lines))
    lines.insert(k, lines[k])
    return "\n".join(lines)


def _delete_line(rng, text):
    lines = text.split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def _nest(rng, text):
    """Wrap an operand in many parentheses, unary minuses or function calls."""
    tokens = [m for m in _tokens(text) if re.match(r"[A-Za-z_]", m.group())
              and m.group() not in ("cell", "state", "param")]
    if not tokens:
        return text
    target, depth = rng.choice(tokens), rng.randint(2, 120)
    opener, closer = rng.choice([("(", ")"), ("-", ""), ("tanh(", ")"), ("-(", ")")])
    return _splice(text, target, opener * depth + target.group() + closer * depth)


def _long_sum(rng, text):
    tokens = [m for m in _tokens(text) if m.group() in ("x", "h", "c")]
    if not tokens:
        return text
    target = rng.choice(tokens)
    return _splice(text, target, " + ".join([target.group()] * rng.randint(2, 400)))


def _odd_whitespace(rng, text):
    spots = [i for i, c in enumerate(text) if c in " \n"]
    if not spots:
        return text
    odd = rng.choice(["\r", "\r\n", "\t", "\x0c", "\u2028", "\u00a0", "\x0b", "\x85",
                      "\n\n\n", "", "\ufeff"])
    for i in sorted(rng.sample(spots, min(len(spots), rng.randint(1, 5))), reverse=True):
        text = text[:i] + odd + text[i + 1:]
    return text


def _line_endings(rng, text):
    return text.replace("\n", rng.choice(["\r", "\r\n", "\n\r", "\u2028"]))


def _huge_number(rng, text):
    numbers = [m for m in _tokens(text) if m.group()[0].isdigit()]
    huge = rng.choice(["1e400", "9" * 40, "0", "1e-400", "00000001", "1.", "18446744073709551617",
                       str(2**63)])
    if numbers:
        return _splice(text, rng.choice(numbers), huge)
    return text.replace(": H", f": {huge}", 1)


def _stray(rng, text):
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice("(){}[]@+-*/=',:#;.\\\"$0") + text[i:]


def _replace_name(rng, text):
    tokens = [m for m in _tokens(text) if re.match(r"[A-Za-z_]", m.group())]
    if len(tokens) < 2:
        return text
    a, b = rng.sample(tokens, 2)
    return _splice(text, a, b.group())


MUTATIONS = [_delete_token, _swap_tokens, _duplicate_line, _delete_line, _nest, _long_sum,
             _odd_whitespace, _line_endings, _huge_number, _stray, _replace_name]


def _run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(args)
        except SystemExit as exc:  # argparse
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def test_mutated_specs_get_a_located_diagnostic_or_succeed(tmp_path, record_property):
    rng = random.Random(SEED)
    specs = sorted(SPECS_DIR.rglob("*.lstm"))
    texts = [p.read_text(encoding="utf-8") for p in specs]
    path = tmp_path / "mutant.lstm"
    counts = {"cases": 0, "runs": 0, "accepted": 0, "diagnosed": 0}
    failures = []
    deadline = time.monotonic() + SPEC_SECONDS
    while time.monotonic() < deadline and len(failures) < 5:
        text = rng.choice(texts)
        applied = [rng.choice(MUTATIONS) for _ in range(rng.randint(1, 3))]
        for mutation in applied:
            text = mutation(rng, text)
        path.write_bytes(text.encode("utf-8"))
        counts["cases"] += 1
        for args in (["check", str(path)], ["compile", str(path), "--emit", "ir"]):
            status, _, err = _run_cli(args)
            counts["runs"] += 1
            ok = status == 0 or (status == 1 and LOCATED.search(err) and "Traceback" not in err)
            if status == 0:
                counts["accepted"] += 1
            elif ok:
                counts["diagnosed"] += 1
            else:
                failures.append((args[0], [m.__name__ for m in applied], status, err[-600:],
                                 text[:2000]))
                break
    _report(record_property, "spec_mutations", counts)
    assert not failures, "\n\n".join(
        f"{cmd} after {muts}: exit {status}\n{err}\n--- spec ---\n{text}"
        for cmd, muts, status, err, text in failures)
    assert counts["cases"] >= 10


# -- manifest edits ---------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import lstmc_runtime
    from lstmc_runtime.errors import LstmcError

    cases, inputs, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
    data = np.load(inputs)
    params = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
    deadline = time.monotonic() + budget
    for directory in json.load(open(cases)):
        if time.monotonic() > deadline:
            break
        print("start", directory, flush=True)
        try:
            cell = lstmc_runtime.load(directory)
            y, final, tape = cell.forward(data["x"], params, train=True,
                                          lengths=data["lengths"])
            grads = tape.backward(data["dy"])
        except LstmcError as exc:
            print("refused", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
            continue
        except Exception as exc:
            print("UNNAMED", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
            continue
        same = (np.array_equal(y, data["y"]) and np.array_equal(grads["x"], data["dx"])
                and all(np.array_equal(grads["params"][k], data["g_" + k]) for k in params))
        print("same" if same else "DIFFERENT", flush=True)
""")


def _leaves(value, path=()):
    """Every (path, value) of a JSON document whose value is not a container, and every
    container itself (so a list or object can be emptied or dropped too)."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))


def _mutate_value(rng, value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, 0, -1, 1, 2 * value, 2**63, -(2**63), 2**31,
                           str(value), None, 1.5])
    if isinstance(value, float):
        return rng.choice([value * 2, -value, 0.0, float("1e308"), None])
    if isinstance(value, str):
        return rng.choice([value + "x", value[:-1], "", "T", "B", "float64", "float32",
                           "abort", "../x", "saved:0", "int64", "in", "out", "work", 3, None])
    if isinstance(value, list):
        return rng.choice([[], value[:-1], value + value[-1:], value[::-1], None, {}])
    if isinstance(value, dict):
        return rng.choice([{}, None, []])
    return rng.choice([0, "", [], {}])


def _edited(rng, data):
    data = json.loads(json.dumps(data))
    candidates = [p for p, _ in _leaves(data) if p and p[0] != "manifest_sha256"]
    path = rng.choice(candidates)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.1:
        del parent[path[-1]]
        return data, f"removed {path}"
    new = _mutate_value(rng, parent[path[-1]])
    parent[path[-1]] = new
    return data, f"{path} = {new!r}"


def test_edited_manifests_are_refused_or_change_nothing(tmp_path, record_property):
    artifact = tmp_path / "artifact"
    lstmc.api.write_artifact_dir(str(SPECS_DIR / "lstm.lstm"), str(artifact), 3, 4,
                                 dtype="float64")
    cell = lstmc_runtime_load(artifact)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((5, 3, 3))
    params = cell.init_params(seed=SEED)
    lengths = np.array([5, 2, 4])
    dy = rng.standard_normal((5, 3, 4))
    y, _, tape = cell.forward(x, params, train=True, lengths=lengths)
    grads = tape.backward(dy)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x, lengths=lengths, dy=dy, y=y, dx=grads["x"],
             **{"p_" + k: v for k, v in params.items()},
             **{"g_" + k: v for k, v in grads["params"].items()})

    pick = random.Random(SEED)
    original = json.loads((artifact / "manifest.json").read_text())
    cases, edits = [], {}
    for k in range(400):
        directory = tmp_path / f"case{k}"
        directory.mkdir()
        os.link(artifact / "cell.so", directory / "cell.so")
        data, what = _edited(pick, original)
        if pick.random() < 0.8 and isinstance(data, dict):  # as a deliberate editor would
            data["manifest_sha256"] = self_checksum(data)
        (directory / "manifest.json").write_text(json.dumps(data))
        cases.append(str(directory))
        edits[str(directory)] = what
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "worker.py").write_text(WORKER)
    run = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path /
                          "cases.json"), str(inputs), str(MANIFEST_SECONDS)],
                         check=False, capture_output=True, text=True,
                         timeout=MANIFEST_SECONDS + 300)
    counts = {"cases": 0, "refused": 0, "same": 0}
    current, bad = None, []
    for line in run.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "start":
            current = rest
            counts["cases"] += 1
        elif word in ("refused", "same"):
            counts[word] += 1
        else:
            bad.append(f"{edits.get(current)}: {line}")
    _report(record_property, "manifest_edits", counts)
    assert run.returncode == 0, (f"the worker died (exit {run.returncode}) on the edit "
                                 f"{edits.get(current)}:\n{run.stderr[-2000:]}")
    assert not bad, "\n".join(bad[:20])
    assert counts["cases"] >= 10
    shutil.rmtree(tmp_path, ignore_errors=True)


def lstmc_runtime_load(directory):
    import lstmc_runtime

    return lstmc_runtime.load(directory)


@pytest.mark.parametrize("seed", [SEED])
def test_mutations_are_deterministic_for_a_seed(seed):
    text = (SPECS_DIR / "lstm.lstm").read_text()
    first = [m(random.Random(seed), text) for m in MUTATIONS]
    again = [m(random.Random(seed), text) for m in MUTATIONS]
    assert first == again
