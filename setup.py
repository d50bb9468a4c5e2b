"""Build the compiled walker, snapshot._du (_du.pyx and the .pxi and .h files it includes).

On Linux the extension is required (descriptor-relative system calls, FIEMAP, leases):
a failed build fails the install instead of silently leaving the slow walker.  Elsewhere
the package is pure Python (see _size.py).

SNAPSHOT_SANITIZE=1 builds with -fsanitize=address,undefined and the C layer's checks
(SNAP_ASSERT) on (see README).
"""
import glob
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
        cflags = ["-O1", "-g", "-DSNAPSHOT_CHECKS"] + san
        ldflags = san
    here = os.path.join("src", "snapshot")
    ext_modules = cythonize(
        [
            Extension(
                "snapshot._du",
                [os.path.join(here, "_du.pyx")],
                include_dirs=[here],
                depends=glob.glob(os.path.join(here, "*.pxi")) + glob.glob(os.path.join(here, "*.h")),
                extra_compile_args=cflags,
                extra_link_args=ldflags + ["-pthread"],
            )
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
