"""The one compiled part of carto: the dense scoring kernel's loops (carto_cli/score/_dense.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler with 128-bit
integers is found (gcc and clang have them; MSVC does not) the build goes on without it and carto
runs the numpy version of the same loops (same results, slower; see carto_cli/score/compiled.py).
-ffp-contract=off keeps the compiler from fusing a multiply and an add, so the loops give the numpy
version's and Polars' bits.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]
setup(ext_modules=[Extension("carto_cli.score._dense", ["carto_cli/score/_dense.c"], optional=True,
                             extra_compile_args=flags)])
