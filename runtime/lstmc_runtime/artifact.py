"""Compiled artifacts on disk: a directory with manifest.json and the files it names.

Before anything of an artifact runs, `read_manifest` checks the manifest's schema
version, its nesting, its checksum of itself, and the SHA-256 of every file it names; a
CPU artifact's manifest is then read into a `CpuManifest` (every field typed and
recomputed, see manifest.py), its library's ELF layout must lie within the file (elf.py:
dlopen would die of SIGBUS otherwise) and the library must embed the hash of exactly this
manifest; a GPU artifact's kernel source ends with that hash, and its manifest is read
into a `GpuManifest` (gpu/plan.py). A damaged, half-written or edited artifact is an
ArtifactError naming what is wrong, never a crash."""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import stat
import tempfile

from .elf import check_elf
from .errors import ArtifactError, BackendError
from .manifest import (
    CONTRACT_SYMBOL,
    GPU_CONTRACT_PREFIX,
    SCHEMA,
    CpuManifest,
    check_schema,
    contract_hash,
    gpu_contract_hash,
    is_file_name,
    self_checksum,
)
from .native import LIBRARY_HELPERS, NativeCell

FORMAT = SCHEMA
MANIFEST = "manifest.json"
# lstmc writes manifests a few levels deep; deeper ones are refused before anything
# walks them (hashing one near Python's recursion limit raises RecursionError).
MAX_DEPTH = 32
# lstmc's manifests are tens of kilobytes (a large cell's, a few hundred); a bigger
# one is not of lstmc, and reading it would only cost memory.
MAX_MANIFEST_BYTES = 64 << 20


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_name(directory: str, name) -> str:
    """A file named by a manifest: inside the artifact, never outside it."""
    if (not isinstance(name, str) or not name or os.path.isabs(name)
            or ".." in name.replace("\\", "/").split("/")):
        raise ArtifactError(f"{directory}: the manifest names a file outside the artifact: "
                            f"{name!r}")
    return os.path.join(directory, name)


def file_name(directory: str, name, checksums: dict, what: str) -> str:
    """The path of a file a manifest names as `what` (a library, a kernel source): a
    plain file name in the artifact's own directory, covered by a checksum."""
    if not is_file_name(name):
        raise ArtifactError(f"{directory}: the manifest's {what} must be a file name in the "
                            f"artifact, got {name!r}")
    if name not in checksums:
        raise ArtifactError(f"{directory}: the manifest has no checksum for its {what} "
                            f"{name}")
    return os.path.join(directory, name)


def _nesting_depth(value) -> int:
    """How deeply JSON arrays and objects nest in `value`; counted without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                pending.extend((v, depth + 1)
                               for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _read_manifest_bytes(directory: str, path: str) -> bytes:
    """manifest.json's bytes: a regular file of at most MAX_MANIFEST_BYTES. Opened without
    blocking and checked before reading, so a FIFO cannot hang the loader nor a link to
    /dev/zero exhaust its memory."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: not an lstmc artifact (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses directories
        os.close(fd)
        raise ArtifactError(f"{path}: unreadable manifest (not a regular file)")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_MANIFEST_BYTES + 1)  # reads until that or the end
        except OSError as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc.strerror or exc})") \
                from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: unreadable manifest (larger than "
                            f"{MAX_MANIFEST_BYTES} bytes)")
    return data


def read_manifest(directory: str) -> dict:
    """The manifest of an artifact directory, once its schema, its own checksum and the
    checksums of the files it names have been verified."""
    path = os.path.join(directory, MANIFEST)
    data = _read_manifest_bytes(directory, path)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: unreadable manifest (not a JSON object)")
    if _nesting_depth(manifest) > MAX_DEPTH:
        raise ArtifactError(f"{path}: unreadable manifest (nested deeper than {MAX_DEPTH} "
                            "levels)")
    check_schema(manifest, path)
    if manifest.get("manifest_sha256") != self_checksum(manifest):
        raise ArtifactError(f"{path}: the manifest does not match its own checksum (edited "
                            "or damaged); recompile the artifact")
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict):
        raise ArtifactError(f"{path}: field 'checksums' must be an object")
    for name, expected in checksums.items():
        file = _plain_name(directory, name)
        if not os.path.isfile(file):
            raise ArtifactError(f"{directory}: artifact is incomplete: {name} is missing")
        try:
            digest = sha256(file)
        except OSError as exc:  # unreadable: permissions, an I/O error
            raise ArtifactError(f"{directory}: cannot read {name} ({exc.strerror or exc})") \
                from None
        if digest != expected:
            raise ArtifactError(f"{directory}: {name} does not match its checksum "
                                "(damaged or partially written); recompile it")
    return manifest


def load_cell(directory: str, manifest: dict | None = None):
    """One compiled cell from an artifact directory."""
    manifest = manifest or read_manifest(directory)
    target = manifest.get("target")
    if target in ("cuda", "opencl"):
        return _load_gpu_cell(directory, manifest)
    if target != "cpu":
        raise ArtifactError(f"{directory}: target {target!r} artifacts are not run by the "
                            "CPU runtime")
    typed = CpuManifest.from_json(manifest, os.path.join(directory, MANIFEST))
    if typed.library is None:
        raise ArtifactError(f"{directory}: the manifest names no library")
    _check_cpu(directory, typed)
    library = _load_private_copy(directory, typed)
    _check_contract(directory, library, manifest)
    functions: dict[str, int] = {}
    for entry in typed.entries.values():
        address = ctypes.cast(getattr(library, entry.symbol), ctypes.c_void_p).value
        assert address is not None  # getattr raises AttributeError for a missing symbol
        functions[entry.symbol] = address
    for symbol in LIBRARY_HELPERS:  # workers, packing, wavefront: older libraries lack them
        if hasattr(library, symbol):
            functions[symbol] = ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value or 0
    return NativeCell(typed, functions, keepalive=library)


def _check_contract(directory: str, library: ctypes.CDLL, manifest: dict) -> None:
    """The library was built against exactly this manifest (see manifest.py)."""
    try:
        embedded = (ctypes.c_char * 64).in_dll(library, CONTRACT_SYMBOL).raw.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        embedded = None
    if embedded != contract_hash(manifest):
        raise ArtifactError(f"{directory}: the manifest does not describe the library it "
                            "names (the manifest was edited, or the library swapped); "
                            "recompile the artifact")


def _load_gpu_cell(directory: str, manifest: dict):
    from .gpu.executor import GpuCell
    from .gpu.plan import GpuManifest

    checksums = manifest.get("checksums")
    checksums = checksums if isinstance(checksums, dict) else {}  # read_manifest checks it
    name = manifest.get("source")
    path = file_name(directory, name, checksums, "kernel source")
    # The very bytes whose checksum is verified are compiled (as for a CPU library).
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the kernel source ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != checksums[name]:
        raise ArtifactError(f"{directory}: {name} does not match its checksum "
                            "(damaged or partially written); recompile it")
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: the kernel source is not UTF-8 text ({exc.reason} at "
                            f"byte {exc.start}); recompile the artifact") from None
    last = source.rstrip("\n").rpartition("\n")[2]
    # First, and of the JSON as read: an edit is named as one, whatever field it touched.
    if last != f"{GPU_CONTRACT_PREFIX}{gpu_contract_hash(manifest)} */":
        raise ArtifactError(f"{directory}: the manifest's launch plan is not the one its kernel "
                            "source was generated with (the manifest was edited, or the source "
                            "swapped); recompile the artifact")
    typed = GpuManifest.from_json(manifest, os.path.join(directory, MANIFEST))
    binaries = {arch: file_name(directory, b.cubin, checksums, f"{arch} binary")
                for arch, b in typed.binaries.items()}
    return GpuCell(typed, source, binaries=binaries)


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None  # not Linux x86: nothing to compare with


def _check_cpu(directory: str, manifest: CpuManifest) -> None:
    """Refuse a library built for instructions this CPU lacks (running it would die of
    SIGILL), naming them."""
    required = manifest.cpu.get("features", [])
    flags = _cpu_flags()
    if not required or flags is None:
        return
    missing = [f for f in required if f not in flags]
    if missing:
        raise BackendError(
            f"{directory}: compiled for a CPU with {', '.join(missing)}, which this CPU "
            f"lacks; recompile here, or with `lstmc compile --cpu x86-64-v3` (or -v2) for "
            "a portable artifact")


def _load_private_copy(directory: str, manifest: CpuManifest) -> ctypes.CDLL:
    """dlopen a private, already deleted copy of the library, made from the very bytes
    whose checksum was verified. The artifact's file may then be replaced, truncated or
    rebuilt at the same path without touching the mapped code (a truncated mapped file
    would crash the process) and without dlopen handing back a stale handle."""
    name = manifest.library
    assert name is not None  # load_cell checked it
    path = file_name(directory, name, manifest.checksums, "library")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the native library ({exc.strerror})") from None
    expected = manifest.checksums.get(name)
    if expected is None or hashlib.sha256(data).hexdigest() != expected:
        raise ArtifactError(f"{directory}: {name} does not match its checksum "
                            "(damaged or partially written); recompile it")
    check_elf(data, path)  # a truncated library would crash dlopen (SIGBUS): see elf.py
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
    """manifest.json for `directory`: the schema version, the SHA-256 of each of `files`,
    and the manifest's checksum of itself."""
    manifest = dict(manifest, format=FORMAT,
                    checksums={f: sha256(os.path.join(directory, f)) for f in files})
    manifest["manifest_sha256"] = self_checksum(manifest)
    write_file(directory, MANIFEST, json.dumps(manifest, indent=1))


def write_file(directory: str, name: str, data: str | bytes) -> None:
    """Write the artifact's file `name` whole or not at all: a new file renamed over the
    old one. A failure leaves the old file, and a link there is replaced, not written
    through (that would overwrite a file outside the artifact)."""
    path = os.path.join(directory, name)
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
