"""Builds the optional compiled parts next to their pure-Python twins.

Each extension is optional: if a C compiler is missing the build carries on and Keel
falls back to Python (same events, same bytes, same state hash):
- engine._cbook: the matching core (engine/_cbook.c);
- engine.service._wire: the engine service's command decoder / event encoder;
- sinks._depth: the ClickHouse sink's reader of keel.depth records.
"""
from pathlib import Path

from setuptools import Extension, setup

EXTENSIONS = {"engine._cbook": "engine/_cbook.c", "engine.service._wire": "engine/service/_wire.c",
              "sinks._depth": "sinks/_depth.c"}
ext_modules = [Extension(name, [source], extra_compile_args=["-O3", "-std=c11"], optional=True)
               for name, source in EXTENSIONS.items() if Path(source).exists()]
setup(ext_modules=ext_modules)
