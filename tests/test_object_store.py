"""Logs on object storage: `carto score s3://...` against a real S3 API served locally by moto.

The server (moto's ThreadedMotoServer, HTTP on 127.0.0.1) stands in for S3; carto reaches it the
way a user reaches any S3-compatible store, through the standard environment variables that both
pyarrow and Polars read (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Nothing leaves the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from conftest import assert_hand_scores, hand_rows, write_parts
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.io import storage

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "carto-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 endpoint holding the hand log flat (hand/) and bucketed (bucketed/)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._filesystem.cache_clear()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    local = tmp_path_factory.mktemp("s3src")
    write_parts(local / "hand", hand_rows())
    assert CliRunner().invoke(app, ["logs", "bucketize", str(local / "hand"), "--out", str(local / "bucketed"),
                                    "--buckets", "3"]).exit_code == 0
    (local / "hand" / ".part-r00000-x-000009.parquet.tmp").write_bytes(b"unfinished")  # never read
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, path.relative_to(local).as_posix())
    yield local
    storage._filesystem.cache_clear()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def score(tmp_path: Path, *args: str) -> pl.DataFrame:
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out)


def test_score_reads_a_log_prefix_on_object_storage(s3, tmp_path: Path) -> None:
    remote = score(tmp_path, f"s3://{BUCKET}/hand/")
    assert_hand_scores(remote)
    local = score(tmp_path, str(s3 / "hand"))
    assert remote.equals(local)  # the same bytes in, the same scores out


def test_score_reads_a_bucketed_log_on_object_storage(s3, tmp_path: Path) -> None:
    scores = score(tmp_path, f"s3://{BUCKET}/bucketed")
    assert_hand_scores(scores)


def test_logs_summary_of_single_objects(s3) -> None:
    parts = sorted(p.name for p in (s3 / "hand").glob("*.parquet"))
    urls = [f"s3://{BUCKET}/hand/{name}" for name in parts]
    result = CliRunner().invoke(app, ["logs", "summary", *urls, "--json"])
    assert result.exit_code == 0, result.output
    assert '"rows": 27' in result.stdout and '"samples": 8' in result.stdout


def test_a_missing_prefix_is_one_line(s3, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["score", f"s3://{BUCKET}/nothing-here/", "--out", str(tmp_path / "s.parquet")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: s3://{BUCKET}/nothing-here/: no such file or directory; pass a log " \
        "directory or part file"


def test_bucketize_reads_from_object_storage(s3, tmp_path: Path) -> None:
    out = tmp_path / "bucketed"
    result = CliRunner().invoke(app, ["logs", "bucketize", f"s3://{BUCKET}/hand", "--out", str(out), "--buckets", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["bucket=0", "bucket=1"]
    assert_hand_scores(score(tmp_path, str(out)))
