"""The `carto` command line: a thin Typer layer over the library. Parses options, calls one
function, prints through Rich on stderr (data and --json on stdout), and turns a `CartoError`
into one line and exit 1."""

from carto_cli.cli.app import app, main

__all__ = ["app", "main"]
