"""The on-disk cache of compiled cells.

An entry is an artifact directory named by a hash of everything that determines the
code: the spec's text, the cell, the sizes and dtype, lstmc's version, llvmlite's (hence
LLVM's) version, and the CPU. Entries are built in a temporary directory and renamed into
place, so a reader never sees a half-written one; an entry that fails its checksums is
removed and rebuilt, never loaded."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

from lstmc_runtime.errors import BackendError


def cache_root() -> Path:
    root = os.environ.get("LSTMC_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lstmc"


def _cpu_identity() -> str:
    """The CPU model and features, read without importing LLVM (kept cheap for hits)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of the compiler's and runtime's own source: a changed code generator or
    kernel ABI must never meet code cached by an older one, version bump or not."""
    import lstmc_runtime

    digest = hashlib.sha256()
    for package in (Path(__file__).parent, Path(lstmc_runtime.__file__).parent):
        for path in sorted(package.rglob("*")):
            if path.suffix in (".py", ".lark"):
                digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(parts: dict) -> str:
    from . import __version__

    identity = dict(parts, lstmc=__version__, source=compiler_fingerprint(),
                    llvmlite=metadata.version("llvmlite"),
                    machine=platform.machine(), system=platform.system(), cpu=_cpu_identity())
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:40]


def cached(key: str, build: Callable[[str], None], load: Callable[[str], object]):
    """Load the entry for `key`, building it first when it is missing or damaged."""
    root = cache_root()
    entry = root / key
    if entry.is_dir():
        try:
            return load(str(entry)), True
        except BackendError:
            shutil.rmtree(entry, ignore_errors=True)  # damaged: rebuild below
    root.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
    try:
        build(staging)
        try:
            os.rename(staging, entry)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load(str(entry)), False
