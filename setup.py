# cffi cannot be declared in pyproject alone: this hook builds cext/ into hpcrun._ccore,
# and the per-task program cext/task.c into hpcrun/_task*.so (see cext/build.py).
import runpy

from setuptools import Extension, setup

cext = runpy.run_path("cext/build.py", run_name="cext_build")
setup(cffi_modules=["cext/build.py:ffi"], ext_modules=[Extension(**cext["TASK_EXTENSION"])])
