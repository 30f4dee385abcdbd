#!/usr/bin/env python3
"""Link-time stand-ins for CUDA's shared libraries, for building (not running) executables
that link them directly (candle's cudarc uses `dynamic-linking`) on a machine without a CUDA
toolkit or driver.

    cuda-link-stubs.py STUB_DIR [LINKER_OUTPUT]

Without LINKER_OUTPUT it writes empty stand-ins (so that a first link gets as far as naming
the symbols it misses). LINKER_OUTPUT holds a failed link's messages; for every undefined
symbol it names (GNU ld's `undefined reference to `sym'`, lld's `undefined symbol: sym`),
added to those the stand-ins already define (a linker may stop after so many errors, so a
link is retried until it names no more), this writes, into STUB_DIR, a shared library under the name and SONAME of the real one that
defines `sym` (libcuda.so.1 for the driver API, libcublas.so.13, libcublasLt.so.13,
libcurand.so.10, libnvrtc.so.13), with an empty function of that name. The executable then
records the real libraries' names, and at run time the loader binds the symbols to the real
libraries (the driver's libcuda, CUDA's or pip's others); the stubs are never loaded.
"""

import pathlib
import re
import subprocess
import sys

# Symbol prefix -> (library name, SONAME); the first match wins.
LIBRARIES = [
    ("cublasLt", ("cublasLt", "libcublasLt.so.13")),
    ("cublas", ("cublas", "libcublas.so.13")),
    ("curand", ("curand", "libcurand.so.10")),
    ("nvrtc", ("nvrtc", "libnvrtc.so.13")),
    ("cu", ("cuda", "libcuda.so.1")),
]


def library_of(symbol):
    for prefix, library in LIBRARIES:
        if symbol.startswith(prefix):
            return library
    sys.exit(f"cuda-link-stubs: no CUDA library defines `{symbol}`")


def build(stub_dir, name, soname, symbols):
    source = stub_dir / f"{name}.c"
    source.write_text("".join(f"void {symbol}(void) {{}}\n" for symbol in symbols))
    library = stub_dir / f"lib{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(library), str(source)], check=True)
    print(f"{library.name} ({soname}): {len(symbols)} symbols")


def main():
    stub_dir = pathlib.Path(sys.argv[1])
    stub_dir.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) < 3:
        for _, (name, soname) in LIBRARIES:
            build(stub_dir, name, soname, [])
        return
    text = pathlib.Path(sys.argv[2]).read_text()
    found = set(re.findall(r"undefined reference to `([A-Za-z_][A-Za-z0-9_]*)'", text))
    found |= set(re.findall(r"undefined symbol: ([A-Za-z_][A-Za-z0-9_]*)", text))
    if not found:
        sys.exit(f"cuda-link-stubs: no undefined symbols in {sys.argv[2]}")
    known = set()
    for source in stub_dir.glob("*.c"):
        known |= set(re.findall(r"void ([A-Za-z_][A-Za-z0-9_]*)\(void\)", source.read_text()))
    if found <= known:
        sys.exit(f"cuda-link-stubs: {sys.argv[2]} names only symbols the stand-ins define")
    symbols = sorted(found | known)
    by_library = {library: [] for _, library in LIBRARIES}
    for symbol in symbols:
        by_library[library_of(symbol)].append(symbol)
    for (name, soname), names in by_library.items():
        build(stub_dir, name, soname, names)


if __name__ == "__main__":
    main()
