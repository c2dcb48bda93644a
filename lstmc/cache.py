"""The on-disk cache of compiled cells.

An entry is an artifact directory named by a hash of everything that determines the
code: the spec's text, the cell, the sizes and dtype, lstmc's version, llvmlite's (hence
LLVM's) version, and the CPU. Entries are built in a temporary directory and renamed into
place, so a reader never sees a half-written one; an entry that fails to load for any
reason (checksums, an edited manifest, another schema) is removed and rebuilt, never
trusted. A cache directory that cannot be used (not writable, not a directory) is not an
error: the cell is compiled without the cache, with a CacheWarning naming the directory."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from lstmc_runtime.errors import BackendError


class CacheWarning(UserWarning):
    """The on-disk cache could not be used; compiling went on without it."""


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
    for path in sorted(_compiler_sources(Path(__file__).parent)) + sorted(
            Path(lstmc_runtime.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


# The consumers of compiled cells (PyTorch modules, lab, ONNX, CLI) do not change generated
# code: editing them must not invalidate every cache entry.
_NOT_COMPILER = {"nn", "lab", "onnx", "interop"}


def _compiler_sources(package: Path) -> list[Path]:
    return [path for path in package.rglob("*")
            if path.suffix in (".py", ".lark")
            and path.relative_to(package).parts[0] not in _NOT_COMPILER
            and path.name != "cli.py"]


def cache_key(parts: dict) -> str:
    from . import __version__

    identity = dict(parts, lstmc=__version__, source=compiler_fingerprint(),
                    llvmlite=metadata.version("llvmlite"),
                    machine=platform.machine(), system=platform.system(), cpu=_cpu_identity())
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:40]


def cached(key: str, build: Callable[[str], None], load: Callable[[str], object]):
    """(the loaded entry for `key`, whether it was a hit), building the entry first when it
    is missing or fails to load."""
    root = cache_root()
    entry = root / key
    try:
        present = entry.is_dir()
    except OSError as exc:  # e.g. a cache root inside a directory we may not read
        _warn_unusable(root, exc)
        return _uncached(build, load), False
    if present:
        try:
            return load(str(entry)), True
        except Exception:  # noqa: BLE001 (damaged, edited, another lstmc's: rebuild it)
            _discard(entry)
    elif os.path.lexists(entry):  # a file or a dangling link where the entry goes
        _discard(entry)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
    except OSError as exc:
        _warn_unusable(root, exc)
        return _uncached(build, load), False
    try:
        build(staging)
    except OSError as exc:  # the disk filled up, say: the cache is not usable now
        shutil.rmtree(staging, ignore_errors=True)
        _warn_unusable(root, exc)
        return _uncached(build, load), False
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.rename(staging, entry)
    except OSError:  # another process finished the same entry first, or a damaged one
        try:         # could not be removed: use theirs if it loads, else ours
            return load(str(entry)), False
        except Exception:  # noqa: BLE001 (theirs is unusable: ours was just built)
            try:
                return load(staging), False
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return load(str(entry)), False


def _discard(entry: Path) -> None:
    """Remove an entry; renamed away first, so no reader meets it half removed."""
    doomed = entry.with_name(f".{entry.name}.discarded.{os.getpid()}")
    try:
        os.rename(entry, doomed)
    except OSError:
        doomed = entry
    if os.path.isdir(doomed) and not os.path.islink(doomed):
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(doomed)


def _warn_unusable(root: Path, exc: OSError) -> None:
    reason = exc.strerror or type(exc).__name__
    warnings.warn(f"lstmc: cannot use the cache directory {root} ({reason}); compiling "
                  "without a cache. Set LSTMC_CACHE_DIR to a writable directory.",
                  CacheWarning, stacklevel=4)


def _uncached(build: Callable[[str], None], load: Callable[[str], object]):
    """Build in a private temporary directory, load, and remove it (a loaded library is
    a private copy, so nothing needs the files afterwards)."""
    try:
        with tempfile.TemporaryDirectory(prefix="lstmc-") as directory:
            build(directory)
            return load(directory)
    except OSError as exc:
        raise BackendError(f"cannot compile without a cache either: the temporary "
                           f"directory is unusable ({exc})") from None


# What the cache holds, by name (and nothing else is ever counted or removed, wherever
# LSTMC_CACHE_DIR points): compiled cells (directories named by cache_key), the code every
# cell shares (llvm/support.py), and what a build interrupted by a crash left behind.
_KEY = r"[0-9a-f]{40}"
_KINDS = {"cells": re.compile(_KEY), "shared": re.compile(rf"support-{_KEY}\.o"),
          # a cell's staging or discarded directory; a shared object's temporary file
          # (lstmc_runtime.artifact.write_file)
          "leftovers": re.compile(rf"\.{_KEY}\..+|support-{_KEY}\.o\..+\.tmp")}


def shared_code_path(key: str) -> Path:
    """Where the cache keeps the shared code (llvm/support.py) of `key`."""
    return cache_root() / f"support-{key}.o"


def inventory(root: Path | None = None) -> dict[str, list[Path]]:
    """The cache's entries by kind (cells, shared, leftovers); empty if it has none yet.
    Raises BackendError when the cache directory cannot be read."""
    root = cache_root() if root is None else root
    found: dict[str, list[Path]] = {kind: [] for kind in _KINDS}
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise BackendError(f"cannot read the cache directory {root}: "
                           f"{exc.strerror or exc}") from None
    for name in names:
        for kind, pattern in _KINDS.items():
            if pattern.fullmatch(name):
                found[kind].append(root / name)
                break
    return found


def size_of(path: Path) -> int:
    """Bytes of a file, or of the files under a directory (links not followed)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
    except OSError:  # removed meanwhile by another process
        return 0


def remove(path: Path) -> None:
    """Remove one entry; a cell's directory is renamed away first (see _discard)."""
    if path.is_dir() and not path.is_symlink():
        _discard(path)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


IN_PROGRESS_SECONDS = 3600  # a leftover younger than this may be a build still running


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry of the cache (leftovers only once IN_PROGRESS_SECONDS old);
    returns (entries removed, their bytes)."""
    count = total = 0
    for kind, paths in inventory(root).items():
        for path in paths:
            if kind == "leftovers":
                try:
                    if time.time() - path.lstat().st_mtime < IN_PROGRESS_SECONDS:
                        continue
                except OSError:
                    continue
            size = size_of(path)
            remove(path)
            count, total = count + 1, total + size
    return count, total
