"""cffi builder (API mode): compiles cext/core.c into hpcrun._ccore; and the task program.

The compiled module is hpcrun._ccore, wrapped by hpcrun/_core.py (its only importer);
the two cannot share a name, since an extension module shadows a .py of the same name.

setup.py names this file in cffi_modules; `python cext/build.py` builds in place for development.
"""
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# setuptools wants source paths relative to setup.py (it runs from the project root);
# `python cext/build.py` compiles inside a temporary directory, so it needs absolute ones.
# (cffi's setuptools hook runs this file with __name__ == "__main__" too, so look at argv;
# setup.py's runpy.run_path sets argv[0] to this file, but not __name__.)
SRC = HERE if (__name__ == "__main__"
               and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__)) else "cext"

CFLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2", "-D_FORTIFY_SOURCE=2",
          "-fstack-protector-strong"]

# The per-task front end srun starts (cext/task.c): a program, built as a shared object
# with its own entry point and program interpreter because setuptools builds no
# programs. setup.py passes this to setuptools.Extension; it is never imported.
TASK_EXTENSION = dict(
    name="hpcrun._task",
    sources=[os.path.join(SRC, "task.c"), os.path.join(SRC, "core.c"),
             os.path.join(SRC, "seccomp.c")],
    include_dirs=[SRC],
    extra_compile_args=CFLAGS,
    extra_link_args=["-Wl,-e,hpcrun_task_entry", "-Wl,-z,now", "-Wl,-z,relro"],
)

# What Python sees is core.h itself, less what only a C compiler reads: the include
# guard and #include lines (cffi's cdef takes the rest, #define constants included).
_NOT_CDEF = re.compile(r"\s*#\s*(ifndef|endif|include\b|define\s+HPCRUN_CORE_H\b)")
ffi = FFI()
with open(os.path.join(HERE, "core.h")) as f:
    ffi.cdef("\n".join(ln for ln in f.read().splitlines() if not _NOT_CDEF.match(ln)))

ffi.set_source(
    "hpcrun._ccore",
    '#include "core.h"',
    sources=[os.path.join(SRC, "core.c"), os.path.join(SRC, "seccomp.c")],
    include_dirs=[SRC],
    extra_compile_args=CFLAGS,
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
    # The task program, with the same compiler setuptools would use.
    import subprocess
    import sysconfig
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    out = os.path.join("hpcrun", "_task" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(cc + ["-fPIC", "-shared", "-o", out + ".new"] + TASK_EXTENSION["extra_compile_args"]
                   + ["-I", HERE] + [os.path.join(HERE, "task.c"), os.path.join(HERE, "core.c"),
                                     os.path.join(HERE, "seccomp.c")]
                   + TASK_EXTENSION["extra_link_args"], check=True)
    os.replace(out + ".new", out)
