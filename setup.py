"""Builds the optional C kernels (taxaug/_native/*.c); everything else is in pyproject.toml.

The library is plain C loaded through ctypes, so it needs no Python or torch
headers. ``optional=True``: without a C compiler the install still succeeds
and taxaug uses its torch code instead. ``-ffp-contract=off`` keeps every float
operation rounded on its own, as torch's kernels do (the results must be the
same bytes); ``-fno-trapping-math`` only lets rounding functions vectorise.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup

if sys.platform == "win32":
    native = []
else:
    native = [
        Extension(
            "taxaug._native.kernels",
            sources=sorted(str(path) for path in Path("taxaug/_native").glob("*.c")),
            depends=["taxaug/_native/kernels.h"],
            extra_compile_args=["-O3", "-std=gnu99", "-fvisibility=hidden", "-ffp-contract=off",
                                "-fno-trapping-math"],
            libraries=["m", "pthread", "dl"],
            optional=True,
        )
    ]

setup(ext_modules=native)
