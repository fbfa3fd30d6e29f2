"""Where log parts live: local paths, or object-store URLs.

    carto score s3://my-bucket/runs/7/logs/ --out scores.parquet

A log argument with a scheme (`s3://`, `gs://`, `abfs://`, ...) is an object-store prefix or
object. Listing, footers and every read of a part go through pyarrow's filesystems
(`pyarrow.fs.FileSystem.from_uri`; the Polars kernels' scans too, see `carto_cli.io.logs.scan_paths`),
which take credentials, region and endpoint from the environment as the cloud SDKs do
(`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
`GOOGLE_APPLICATION_CREDENTIALS`, ...). A URL part is a `RemotePath`, which answers the few
questions carto asks of a `Path` (name, parent, parts); everything that opens a part goes through
`open_parquet` and `size` here. Outputs (scores, manifests, states) are local files.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from carto_cli.errors import LogFormatError, first_line

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")


@dataclass(frozen=True)
class RemotePath:
    """An object-store location, e.g. s3://bucket/prefix/part.parquet."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def scheme(self) -> str:
        return _URL.match(self.url).group(1)

    @property
    def key(self) -> str:
        """The location without its scheme: bucket/prefix/..., as pyarrow's filesystems name it."""
        return _URL.match(self.url).group(2).rstrip("/")

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("/"))

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(f"{self.scheme}://{'/'.join(self.parts[:-1])}")

    def resolve(self) -> RemotePath:
        return self

    def child(self, key: str) -> RemotePath:
        """The location at `key` (a filesystem path, bucket first) under the same scheme."""
        return RemotePath(f"{self.scheme}://{key}")


Location = Path | RemotePath


def location(raw: str | os.PathLike[str] | RemotePath) -> Location:
    """A RemotePath for a URL with a scheme other than file://, else a local Path."""
    if isinstance(raw, (Path, RemotePath)):
        return raw
    text = os.fspath(raw)
    match = _URL.match(text)
    if match and match.group(1).lower() != "file":
        return RemotePath(text)
    return Path(match.group(2) if match else text)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    """One pyarrow filesystem per (scheme, bucket), built from the environment."""
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise LogFormatError(f"{scheme}://{bucket}: cannot open this object store ({first_line(exc)})") from None


def filesystem(path: RemotePath) -> pafs.FileSystem:
    return _filesystem(path.scheme, path.parts[0])


def kind(path: Location) -> str:
    """'file', 'dir' or 'missing'."""
    if isinstance(path, Path):
        return "dir" if path.is_dir() else "file" if path.exists() else "missing"
    try:
        info = filesystem(path).get_file_info(path.key)
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot list it ({first_line(exc)}); check the URL and credentials") from None
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(info.type, "missing")


def list_files(root: RemotePath, suffix: str) -> list[tuple[RemotePath, tuple[str, ...]]]:
    """Every object under `root` whose name ends with `suffix`, with its path relative to root."""
    selector = pafs.FileSelector(root.key, recursive=True)
    try:
        infos = filesystem(root).get_file_info(selector)
    except OSError as exc:
        raise LogFormatError(f"{root}: cannot list it ({first_line(exc)}); check the URL and credentials") from None
    depth = len(root.parts)
    return [(root.child(info.path), tuple(info.path.split("/")[depth:]))
            for info in infos if info.type == pafs.FileType.File and info.path.endswith(suffix)]


def open_parquet(path: Location) -> pq.ParquetFile:
    """The Parquet file at `path` (reads the footer), its page checksums verified on every read
    where the writer stored them (a page whose bytes changed fails instead of being decoded).
    Raises what pyarrow raises."""
    source = path if isinstance(path, Path) else filesystem(path).open_input_file(path.key)
    return pq.ParquetFile(source, page_checksum_verification=True)


def size(path: Location) -> int:
    if isinstance(path, Path):
        return path.stat().st_size
    return filesystem(path).get_file_info(path.key).size
