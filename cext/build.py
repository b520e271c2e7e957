"""cffi builder (API mode): compiles cext/*.c into hpcrun._ccore.

The compiled module is hpcrun._ccore, wrapped by hpcrun/_core.py (its only importer);
the two cannot share a name, since an extension module shadows a .py of the same name.

setup.py names this file in cffi_modules; `python cext/build.py` builds in place for development.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# setuptools wants source paths relative to setup.py (it runs from the project root);
# `python cext/build.py` compiles inside a temporary directory, so it needs absolute ones.
# (cffi's setuptools hook runs this file with __name__ == "__main__" too, so look at argv.)
SRC = HERE if os.path.abspath(sys.argv[0]) == os.path.abspath(__file__) else "cext"

ffi = FFI()
with open(os.path.join(HERE, "cdef.h")) as f:
    ffi.cdef(f.read())

ffi.set_source(
    "hpcrun._ccore",
    '#include "core.h"',
    sources=[os.path.join(SRC, "core.c")],
    include_dirs=[SRC],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2",
                        "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong"],
    # -z now: every symbol bound at load time, so a monitor that has dropped the
    # interpreter's memory never calls into the loader (see trim_memory in core.c).
    extra_link_args=["-Wl,-z,now", "-Wl,-z,relro"],
)

if __name__ == "__main__":
    os.chdir(os.path.dirname(HERE))
    ffi.compile(tmpdir=os.path.join("build", "cffi"), verbose=False)
    # compile() leaves the module under build/cffi/hpcrun; move it next to the package.
    import glob
    import shutil
    # Copy then rename: running processes keep the old mapping intact.
    for so in glob.glob(os.path.join("build", "cffi", "hpcrun", "_ccore*.so")):
        dst = os.path.join("hpcrun", os.path.basename(so))
        shutil.copy2(so, dst + ".new")
        os.replace(dst + ".new", dst)
