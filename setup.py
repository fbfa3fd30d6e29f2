"""carto's compiled parts: the dense scoring kernel's loops (carto_cli/score/_dense.c), the
`extractable` signal's (carto_cli/score/_extract.c) and the findings' token search
(carto_cli/score/_match.c).

Everything else is in pyproject.toml. The extensions are optional: where no C compiler is found
(or, for _dense.c, none with 128-bit integers: gcc and clang have them; MSVC does not) the build
goes on without them and carto runs the numpy version of the same loops (same results, slower;
see carto_cli/score/compiled.py). -ffp-contract=off keeps the compiler from fusing a multiply and
an add, so the loops give the numpy version's and Polars' bits.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]
setup(ext_modules=[Extension(f"carto_cli.score.{name}", [f"carto_cli/score/{name}.c"], optional=True,
                             depends=["carto_cli/score/_buffers.h", "carto_cli/score/_typed.h"],
                             extra_compile_args=flags)
                   for name in ("_dense", "_extract", "_match")])
