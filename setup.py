"""Build the compiled walker, snapshot._du, and the zero-block scan, snapshot._blocks.

On Linux the extension is required (it uses fts(3) and the FIEMAP ioctl): a
failed build fails the install instead of silently leaving the slow walker.
Elsewhere the package is pure Python (see _size.py).

SNAPSHOT_SANITIZE=1 builds with -fsanitize=address,undefined (see README).
"""
import os
import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    from Cython.Build import cythonize

    cflags = ["-O2"]
    ldflags = []
    if os.environ.get("SNAPSHOT_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        cflags = ["-O1", "-g"] + san
        ldflags = san
    ext_modules = cythonize(
        [
            Extension(
                f"snapshot.{name}",
                [f"src/snapshot/{name}.pyx"],
                extra_compile_args=cflags,
                extra_link_args=ldflags + ["-pthread"],
            )
            for name in ("_du", "_blocks")
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
