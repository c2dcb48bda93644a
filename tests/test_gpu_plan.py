"""The GPU manifest and launch plan as a typed contract (lstmc_runtime.gpu.plan): what
the kernel generator writes reads back equal, another schema is refused saying which, and
a damaged field is refused naming it. No device needed."""
import copy
import json
import re

import pytest
from conftest import SPEC_NAMES, spec_path
from lstmc_runtime.errors import ArtifactError
from lstmc_runtime.gpu import buffers as names
from lstmc_runtime.gpu.plan import PLAN_SCHEMA, GemmLaunch, GpuManifest, LaunchPlan
from lstmc_runtime.manifest import SCHEMA

from lstmc.api import lower_bound
from lstmc.backends.gpu.kernels import manifest_for

EXTRA = {"lstmp": {"P": 3}, "xlstm/slstm": {"NH": 2}}


def manifest_of(name: str, target: str = "opencl") -> tuple[str, GpuManifest]:
    program, sizes = lower_bound(spec_path(name), None, 5, 6, EXTRA.get(name, {}))
    return manifest_for(program, sizes, target)


@pytest.fixture(scope="module")
def gru():
    return manifest_of("gru")[1].to_json()


@pytest.mark.parametrize("name", SPEC_NAMES + ["xlstm/slstm"])
def test_round_trip(name):
    """to_json, through JSON text, from_json: the same manifest; and the kernel source
    declares every buffer of every mode by the name the plan gives it."""
    source, manifest = manifest_of(name)
    text = json.dumps(manifest.to_json())
    assert GpuManifest.from_json(json.loads(text)) == manifest
    assert LaunchPlan.from_json(manifest.plan.to_json()) == manifest.plan
    for mode in manifest.plan.modes.values():
        for buffer in mode.buffers:
            assert re.search(rf"float\* RESTRICT {buffer.name}\b", source), buffer.name


def test_buffer_names_come_from_one_place():
    _, manifest = manifest_of("peephole_lstm")
    plan = manifest.plan
    train = plan.modes["train"].buffer_names
    assert names.X in train and names.Y in train
    assert {names.state(s) for s in manifest.cell.states} <= set(train)
    backward = plan.modes["backward"].buffer_names
    assert {names.carry(s) for s in manifest.cell.states} <= set(backward)
    assert {g.acc for g in plan.param_grads} == {names.param_acc(g.param)
                                                  for g in plan.param_grads}
    assert all(g.acc in backward for g in plan.param_grads)
    assert all(p.grad == names.dproduct(p.product) in backward for p in plan.products)
    gemms = [s for s in plan.modes["train"].steps if isinstance(s, GemmLaunch)]
    assert gemms and all(s.result.buffer == names.node(s.node) for s in gemms)


def test_buffer_elements():
    _, manifest = manifest_of("gru")
    counts = {b.slots: b.elements(7, 3) // b.width for b in manifest.plan.modes["train"].buffers
              if b.slots != "param"}
    assert counts == {"seq": 7 * 3, "history": 8 * 3, "step": 3}
    rings = [b for b in manifest.plan.modes["infer"].buffers if b.slots == "ring"]
    assert rings and all(b.elements(7, 3) == 2 * 3 * b.width for b in rings)


@pytest.mark.parametrize("version,message", [
    (1, rf"launch plan schema 1 was written by an older lstmc; this runtime reads launch "
        rf"plan schema {PLAN_SCHEMA}: recompile it"),
    (PLAN_SCHEMA + 1, rf"unsupported launch plan schema {PLAN_SCHEMA + 1} \(this runtime "
                      rf"reads launch plan schema {PLAN_SCHEMA}\)"),
    ("2", rf"unsupported launch plan schema '2' \(this runtime reads launch plan schema "
          rf"{PLAN_SCHEMA}\)"),
    (None, "unsupported launch plan schema None"),
])
def test_another_plan_schema_is_refused(gru, version, message):
    data = copy.deepcopy(gru)
    if version is None:
        del data["plan"]["format"]
    else:
        data["plan"]["format"] = version
    with pytest.raises(ArtifactError, match=message):
        GpuManifest.from_json(data)


def test_an_older_manifest_schema_is_refused(gru):
    data = dict(gru, format=SCHEMA - 1)
    with pytest.raises(ArtifactError, match=rf"artifact schema {SCHEMA - 1} was written by an "
                                            rf"older lstmc; this runtime reads schema {SCHEMA}"):
        GpuManifest.from_json(data)


def _train_gemm(data) -> dict:
    return next(s for s in data["plan"]["modes"]["train"]["steps"] if s["kind"] == "gemm")


def _set(path: list, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _delete(path: list):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


TRAIN = ["plan", "modes", "train"]
DAMAGE = {
    "width a string": (_set(TRAIN + ["buffers", 0, "width"], "4"),
                       r"modes\['train'\]: buffers\[0\]: field 'width' must be an integer, "
                       r"got str"),
    "width zero": (_set(TRAIN + ["buffers", 0, "width"], 0),
                   r"buffers\[0\]: field 'width' must be a size in 1\.\."),
    "zero not a bool": (_set(TRAIN + ["buffers", 1, "zero"], 1),
                        r"field 'zero' must be true or false, got int"),
    "unknown slots": (_set(TRAIN + ["buffers", 1, "slots"], "cycle"),
                      r"field 'slots' must be one of seq, history, ring, step, param, "
                      r"got 'cycle'"),
    "buffer name missing": (_delete(TRAIN + ["buffers", 2, "name"]),
                            r"buffers\[2\]: field 'name' is missing"),
    "step kind missing": (_delete(TRAIN + ["steps", 0, "kind"]),
                          r"steps\[0\]: field 'kind' is missing"),
    "region kernel missing": (_delete(TRAIN + ["steps", 1, "kernel"]),
                              r"steps\[1\]: field 'kernel' is missing"),
    "gemm stride a bool": (lambda d: _train_gemm(d).update(stride_k=True),
                           r"field 'stride_k' must be an integer, got True"),
    "gemm operand a list": (lambda d: _train_gemm(d).update(operand=["st_h", "state", 6]),
                            r"field 'operand' must be an object, got list"),
    "gemm slot unknown": (lambda d: _train_gemm(d)["operand"].update(slot="t+1"),
                          r"operand: field 'slot' must be one of t, 0, state, param"),
    "gemm names no buffer": (lambda d: _train_gemm(d)["result"].update(buffer="nd999"),
                             r"mode 'train': product %\d+ names no buffer of the mode: 'nd999'"),
    "gemm names no weight": (lambda d: _train_gemm(d).update(packed="w9"),
                             r"product %\d+ names no packed weight: 'w9'"),
    "a mode missing": (_delete(["plan", "modes", "infer"]),
                       r"field 'modes' must be exactly infer, train, backward"),
    "threads missing": (_delete(["plan", "threads", "region"]),
                        r"plan: threads: field 'region' is missing"),
    "persistent partition": (_set(TRAIN + ["persistent", "partition"], "rows"),
                             r"persistent: field 'partition' must be one of units, columns"),
    "backward persistent": (lambda d: d["plan"]["modes"]["backward"].update(
                                persistent=d["plan"]["modes"]["train"]["persistent"]),
                            r"mode 'backward' has a persistent kernel"),
    "packed segments": (_set(["plan", "packed", 0, "segments"], [["U", "6"]]),
                        r"packed\[0\]: segments: expected a size"),
    "packed shape": (_set(["plan", "packed", 0, "columns"], 7),
                     r"packed weight w0 stacks \w+ as \d+ x 7, but \w+ has shape"),
    "hoisted offset": (_set(["plan", "hoisted", 0, "offset"], -1),
                       r"hoisted\[0\]: field 'offset' must be a count"),
    "state width": (_set(["states", "h"], 7),
                    r"mode 'infer' must have buffer st_h of width 7, got 6"),
    "input width": (_set(["plan", "input_width"], 9),
                    r"input_width is 9, but the cell's inputs are 5 units"),
    "plan not an object": (_set(["plan"], []), r"field 'plan' must be an object, got list"),
    "target": (_set(["target"], "cpu"), r"field 'target' must be one of cuda, opencl"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_field_is_refused(gru, damage):
    edit, message = DAMAGE[damage]
    data = copy.deepcopy(gru)
    edit(data)
    with pytest.raises(ArtifactError, match=message):
        GpuManifest.from_json(data)


def test_an_artifact_with_an_older_plan_is_refused(tmp_path):
    """An artifact an older lstmc wrote (sealed, its source's hash matching) is refused
    for its plan's schema, before any device is touched."""
    from lstmc_runtime.artifact import load_cell, sha256
    from lstmc_runtime.manifest import GPU_CONTRACT_PREFIX, gpu_contract_hash, self_checksum

    from lstmc.backends.gpu.artifact import write_artifact

    program, sizes = lower_bound(spec_path("gru"), None, 4, 6, {})
    write_artifact(str(tmp_path), program, sizes, "float32", target="opencl")
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    data["plan"]["format"] = 1
    source = tmp_path / data["source"]
    lines = source.read_text().rstrip("\n").split("\n")[:-1]
    lines.append(f"{GPU_CONTRACT_PREFIX}{gpu_contract_hash(data)} */")
    source.write_text("\n".join(lines) + "\n")
    data["checksums"][data["source"]] = sha256(str(source))
    data["manifest_sha256"] = self_checksum(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"manifest.json: plan: launch plan schema 1 was "
                                            r"written by an older lstmc"):
        load_cell(str(tmp_path))
