"""Builds the native extensions, fastfaas._native and fastfaas._lane, from csrc/."""

import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise SystemExit(
        "fastfaas runs on Linux only: it forks instances from zygotes and places them in "
        f"cgroups, which {sys.platform!r} does not have."
    )

native = Extension(
    "fastfaas._native",
    sources=["csrc/_native.pyx", "csrc/ff_table.c", "csrc/ff_spawn.c", "csrc/ff_cgroup.c",
             "csrc/ff_sandbox.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

# The warm invocation's path through the HTTP server (see its docstring).
lane = Extension(
    "fastfaas._lane",
    sources=["csrc/_lane.pyx"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

setup(ext_modules=cythonize([native, lane], language_level=3,
                            compiler_directives={"binding": False}))
