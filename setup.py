# cffi cannot be declared in pyproject alone: this hook builds cext/ into hpcrun._ccore,
# the per-task program cext/task.c into hpcrun/_task*.so, and the `hpcrun` command
# itself, the C launcher cext/launcher.c, in place of the script bin/hpcrun (see
# cext/build.py).
import os
import runpy
import sys

from setuptools import Extension, setup
from distutils.command.build_scripts import build_scripts  # setuptools vendors distutils

cext = runpy.run_path("cext/build.py", run_name="cext_build")


class BuildScripts(build_scripts):
    """bin/hpcrun is copied as usual, then replaced by the compiled launcher, built for
    the interpreter this installation is for (its fallback for all but warm runs)."""

    def run(self):
        super().run()
        out = os.path.join(self.build_dir, "hpcrun")
        cext["build_launcher"](os.path.abspath("."), out, sys.executable)


setup(cffi_modules=["cext/build.py:ffi"], ext_modules=[Extension(**cext["TASK_EXTENSION"])],
      cmdclass={"build_scripts": BuildScripts})
