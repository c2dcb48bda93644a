"""The LLVM backend: fused schedules rendered as native code through llvmlite."""
