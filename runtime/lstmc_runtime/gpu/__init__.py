"""GPU targets: one orchestration (executor.GpuCell) over two array-and-launch layers,
CUDA through CuPy (cuda.py) and OpenCL through pyopencl (opencl.py)."""
