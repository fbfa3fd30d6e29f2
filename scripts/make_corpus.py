"""Build the corpus carto ships (`carto_cli/experiment/data/`) from this interpreter's CPython installation.

    python scripts/make_corpus.py            # writes carto_cli/experiment/data/cpython-*.txt.gz and LICENSE

The pydoc topics (whole) and the first 2 MB of standard-library source (`carto_cli.experiment.corpus`:
sorted paths, tests and idlelib left out), gzip-compressed with a fixed mtime so that the same
interpreter always writes the same bytes, and the interpreter's own LICENSE.txt (the PSF License
and the history of CPython's licences). The shipped files were made with CPython 3.11.7.
"""

from __future__ import annotations

import gzip
import sys
import sysconfig
from pathlib import Path

from carto_cli.experiment import corpus


def main() -> None:
    out = corpus.DATA_DIR
    out.mkdir(exist_ok=True)
    for name, data in ((corpus.TOPICS_FILE, corpus.topics_stream()), (corpus.SOURCE_FILE, corpus.source_stream())):
        (out / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        print(f"{out / name}: {len(data):,} bytes of text")
    licence = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    (out / "LICENSE-PSF.txt").write_text(licence.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"from Python {sys.version.split()[0]}; licence copied from {licence}")


if __name__ == "__main__":
    main()
