"""The one compiled part of carto: the dense scoring kernel's per-row loops (carto_cli/score/_dense.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler is found the
build goes on without it and carto runs the numpy version of the same loops (same results, slower;
see carto_cli/score/compiled.py). -ffp-contract=off keeps the compiler from fusing a multiply and an
add, so the loops give the numpy version's bits.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]
setup(ext_modules=[Extension("carto_cli.score._dense", ["carto_cli/score/_dense.c"], optional=True,
                             extra_compile_args=flags)])
