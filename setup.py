# cffi cannot be declared in pyproject alone: this hook builds cext/ into hpcrun._core.
from setuptools import setup

setup(cffi_modules=["cext/build.py:ffi"])
