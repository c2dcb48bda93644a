"""The GPU backend: the fused schedules rendered as kernels in a portable dialect that
compiles both as CUDA C (run by CuPy, checked by NVRTC) and as OpenCL C (run by
pyopencl, on PoCL in CI), plus the plan the runtime follows to launch them."""
