"""Compiled artifacts on disk: a directory with manifest.json and the native library.

The manifest records a SHA-256 of every file it refers to; `load` checks them before
loading anything, so a damaged or half-written artifact is an error, never a crash."""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import tempfile

from .errors import BackendError
from .native import NativeCell

FORMAT = 1
MANIFEST = "manifest.json"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise BackendError(f"{directory}: not an lstmc artifact (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise BackendError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackendError(f"{path}: unsupported artifact format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else '?'}"
                           f" (this runtime reads format {FORMAT})")
    for name, expected in manifest.get("checksums", {}).items():
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            raise BackendError(f"{directory}: artifact is incomplete: {name} is missing")
        if sha256(file) != expected:
            raise BackendError(f"{directory}: {name} does not match its checksum "
                               "(damaged or partially written); recompile it")
    return manifest


def load_cell(directory: str, manifest: dict | None = None) -> NativeCell:
    """One compiled cell from an artifact directory."""
    manifest = manifest or read_manifest(directory)
    if manifest.get("target") in ("cuda", "opencl"):
        return _load_gpu_cell(directory, manifest)
    if manifest.get("target") != "cpu":
        raise BackendError(f"{directory}: target '{manifest.get('target')}' artifacts are not "
                           "run by the CPU runtime")
    _check_cpu(directory, manifest)
    library = _load_private_copy(directory, manifest)
    functions = {}
    for entry in manifest["entries"].values():
        functions[entry["symbol"]] = ctypes.cast(getattr(library, entry["symbol"]),
                                                 ctypes.c_void_p).value
    return NativeCell(manifest, functions, keepalive=library)


def _load_gpu_cell(directory: str, manifest: dict):
    from .gpu.executor import GpuCell

    path = os.path.join(directory, manifest["source"])
    with open(path, encoding="utf-8") as f:
        source = f.read()
    binaries = {arch: os.path.join(directory, files["cubin"])
                for arch, files in manifest.get("binaries", {}).items()}
    return GpuCell(manifest, source, binaries=binaries)


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None  # not Linux x86: nothing to compare with


def _check_cpu(directory: str, manifest: dict) -> None:
    """Refuse a library built for instructions this CPU lacks (running it would die of
    SIGILL), naming them."""
    required = manifest.get("cpu", {}).get("features", [])
    flags = _cpu_flags()
    if not required or flags is None:
        return
    missing = [f for f in required if f not in flags]
    if missing:
        raise BackendError(
            f"{directory}: compiled for a CPU with {', '.join(missing)}, which this CPU "
            f"lacks; recompile here, or with `lstmc compile --cpu x86-64-v3` (or -v2) for "
            "a portable artifact")


def _load_private_copy(directory: str, manifest: dict) -> ctypes.CDLL:
    """dlopen a private, already deleted copy of the library, made from the very bytes
    whose checksum was verified. The artifact's file may then be replaced, truncated or
    rebuilt at the same path without touching the mapped code (a truncated mapped file
    would crash the process) and without dlopen handing back a stale handle."""
    name = manifest["library"]
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BackendError(f"{path}: cannot read the native library ({exc.strerror})") from None
    expected = manifest.get("checksums", {}).get(name)
    if expected is None or hashlib.sha256(data).hexdigest() != expected:
        raise BackendError(f"{directory}: {name} does not match its checksum "
                           "(damaged or partially written); recompile it")
    errors = []
    for place in (None, directory):
        try:
            fd, copy = tempfile.mkstemp(suffix=".so", prefix="lstmc-", dir=place)
        except OSError as exc:
            errors.append(str(exc))
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return ctypes.CDLL(copy)
        except OSError as exc:  # e.g. a temporary directory mounted noexec
            errors.append(str(exc))
        finally:
            os.unlink(copy)
    raise BackendError(f"{path}: cannot load the native library ({'; '.join(errors)})")


def write_manifest(directory: str, manifest: dict, files: list[str]) -> None:
    manifest = dict(manifest, format=FORMAT,
                    checksums={f: sha256(os.path.join(directory, f)) for f in files})
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
