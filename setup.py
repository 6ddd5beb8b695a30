"""Builds the optional compiled matching core next to the pure-Python one.

The extension is optional: if a C compiler is missing the build carries on and
engine/ falls back to the pure-Python book (same events, same state hash).
"""
from pathlib import Path

from setuptools import Extension, setup

sources = [p for p in ["engine/_cbook.c"] if Path(p).exists()]
ext_modules = (
    [Extension("engine._cbook", sources, extra_compile_args=["-O3", "-std=c11"], optional=True)]
    if sources
    else []
)
setup(ext_modules=ext_modules)
