"""The GPU kernels of the peephole LSTM: on target "cuda" when CuPy sees a GPU, else the
same kernel text as OpenCL (PoCL runs it on the CPU). Checked against the CPU target."""
import pathlib

import numpy as np

import lstmc

SPECS = pathlib.Path(__file__).resolve().parent.parent / "specs"

try:
    target = "cuda"
    cell = lstmc.compile(SPECS / "peephole_lstm.lstm", 8, 16, target=target)
except lstmc.BackendError as why:
    print(f"no CUDA here ({why}); using OpenCL")
    target = "opencl"
    cell = lstmc.compile(SPECS / "peephole_lstm.lstm", 8, 16, target=target)
cpu = lstmc.compile(SPECS / "peephole_lstm.lstm", 8, 16, target="cpu")

params = cpu.init_params(seed=0)
x = np.random.default_rng(0).standard_normal((20, 4, 8)).astype(np.float32)
y_cpu, _, tape_cpu = cpu.forward(x, params, train=True)
y_gpu, _, tape_gpu = cell.forward(x, params, train=True)   # NumPy in; CuPy out on cuda
dx_cpu = tape_cpu.backward(np.ones_like(y_cpu))["x"]
dx_gpu = tape_gpu.backward(np.ones_like(y_cpu))["x"]
host = (lambda a: a) if target == "opencl" else __import__("cupy").asnumpy
print(cell, "on", cell.device.name)
print("max |gpu - cpu|: y", float(np.abs(host(y_gpu) - y_cpu).max()),
      "dx", float(np.abs(host(dx_gpu) - dx_cpu).max()))
