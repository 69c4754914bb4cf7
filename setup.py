# cffi_modules cannot be declared in pyproject.toml yet (FIELD-NOTES): this file
# exists only to hand setuptools the cffi build of the C datapath.
from setuptools import setup

setup(cffi_modules=["mpt/_build_datapath.py:ffibuilder"])
