"""A structural check of a shared library's ELF layout, made before dlopen.

dlopen maps each loadable segment from the file as its program header says. If the file
is shorter than a segment (a truncated library, its checksum recomputed to match), the
mapping still succeeds, and the first touch of a page past the end of the file kills the
process with SIGBUS: no error can be raised after that. So the bytes about to be loaded
are checked first: a 64-bit little-endian ELF shared object for x86-64 or AArch64 (what
lstmc builds), whose program header table, segments and section header table all lie
within the file. This catches damage, not malice: a library that passes is still loaded
as trusted native code (see manifest.py)."""
from __future__ import annotations

import struct

from .errors import ArtifactError

_IDENT = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB, _EV_CURRENT = 2, 1, 1
_ET_DYN = 3
_MACHINES = {62: "x86-64", 183: "AArch64"}
_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr, 64 bytes
_SEGMENT = struct.Struct("<IIQQQQQQ")          # Elf64_Phdr, 56 bytes
_SECTION = struct.Struct("<IIQQQQIIQQ")        # Elf64_Shdr, 64 bytes
_PT_LOAD, _SHT_NOBITS = 1, 8
_PN_XNUM = 0xFFFF  # more segments than the header can count: never written by lstmc


def check_elf(data: bytes, path: str) -> None:
    """Refuse, with an ArtifactError naming `path`, bytes that dlopen could not map
    safely: not an ELF shared object of the kind lstmc builds, or one whose tables or
    segments reach past the end of the file."""
    def fail(message: str):
        raise ArtifactError(f"{path}: not a loadable native library: {message}; "
                            "recompile the artifact")

    size = len(data)
    if size < _HEADER.size or data[:4] != _IDENT:
        fail("no ELF header")
    (ident, e_type, machine, _version, _entry, phoff, shoff, _flags, ehsize, phentsize,
     phnum, shentsize, shnum, _shstrndx) = _HEADER.unpack_from(data)
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB or ident[6] != _EV_CURRENT:
        fail(f"ELF class {ident[4]}, data encoding {ident[5]}, version {ident[6]} "
             "(lstmc builds 64-bit little-endian ELF, version 1)")
    if machine not in _MACHINES:
        fail(f"ELF machine {machine} (lstmc builds for {', '.join(_MACHINES.values())})")
    if e_type != _ET_DYN:
        fail(f"ELF type {e_type}, not a shared object")
    if ehsize != _HEADER.size or phentsize != _SEGMENT.size:
        fail(f"header sizes {ehsize} and {phentsize} are not those of ELF64")
    if phnum == 0 or phnum == _PN_XNUM or phoff + phnum * phentsize > size:
        fail(f"its program header table ({phnum} entries at offset {phoff}) does not lie "
             f"within the file ({size} bytes)")
    loads = 0
    for k in range(phnum):
        p_type, _pflags, offset, _vaddr, _paddr, filesz, memsz, _align = \
            _SEGMENT.unpack_from(data, phoff + k * phentsize)
        if offset + filesz > size:
            fail(f"segment {k} (bytes {offset}..{offset + filesz}) reaches past the end "
                 f"of the file ({size} bytes): truncated")
        if p_type == _PT_LOAD:
            loads += 1
            if filesz > memsz:
                fail(f"loadable segment {k} holds more bytes in the file than in memory")
    if not loads:
        fail("it has no loadable segment")
    if shnum or shoff:
        if shentsize != _SECTION.size or shnum == 0 or shoff + shnum * shentsize > size:
            fail(f"its section header table ({shnum} entries at offset {shoff}) does not "
                 f"lie within the file ({size} bytes): truncated")
        for k in range(shnum):
            fields = _SECTION.unpack_from(data, shoff + k * shentsize)
            sh_type, offset, length = fields[1], fields[4], fields[5]
            if sh_type != _SHT_NOBITS and offset + length > size:
                fail(f"section {k} (bytes {offset}..{offset + length}) reaches past the "
                     f"end of the file ({size} bytes): truncated")
