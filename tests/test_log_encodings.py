"""How a log part is encoded (`carto_cli.log.writer.column_encodings`, docs/logging.md "Encodings"):
each column's Parquet encoding, every reader reading back the values written, and scores that do
not depend on the encoding (the sample logs were written before it: dictionary-encoded floats)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.log import schema
from carto_cli.log.writer import column_encodings, write_parquet

runner = CliRunner()
SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"


def _part(n: int = 5000) -> pa.Table:
    rng = np.random.default_rng(0)

    def lists(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
        offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=dtype))

    columns = {
        schema.SAMPLE_ID: rng.permutation(n).astype(np.int64), schema.EPOCH: np.zeros(n, dtype=np.int32),
        schema.STEP: np.arange(n) // 8, schema.LOSS: rng.random(n).astype(np.float32) * 4,
        schema.CORRECT: rng.random(n) < 0.5, schema.TOKEN_ACC: rng.random(n).astype(np.float32),
        schema.TAIL_LOSS: rng.random(n).astype(np.float32), schema.N_TOKENS: np.full(n, 64, dtype=np.int32),
        schema.RANK: np.zeros(n, dtype=np.int32),
        schema.TOKEN_LOSS: lists((rng.random((n, 8)) * 6).astype(np.float16), pa.float16()),
        schema.TOP_POS: lists(rng.integers(0, 64, (n, 10)).astype(np.uint16), pa.uint16()),
        schema.TOP_LOSS: lists((rng.random((n, 10)) * 6).astype(np.float16), pa.float16()),
        schema.HIT_RUNS: lists(rng.integers(0, 20, (n, 12)).astype(np.uint16), pa.uint16()),
    }
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in schema.LOG_SCHEMA],
                                schema=schema.LOG_SCHEMA)


def test_each_column_gets_the_encoding_that_suits_it_and_every_reader_reads_it(tmp_path: Path) -> None:
    table = _part()
    path = tmp_path / "part.parquet"
    write_parquet(table, path)
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: set(group.column(i).encodings) for i in range(group.num_columns)}
    for name in (schema.LOSS, schema.TOKEN_ACC, schema.TAIL_LOSS):  # float32: byte-stream split
        assert "BYTE_STREAM_SPLIT" in encodings[name] and "RLE_DICTIONARY" not in encodings[name], name
    name = "top_loss.list.element"  # the sketch's float16 losses: plain
    assert "RLE_DICTIONARY" not in encodings[name] and "BYTE_STREAM_SPLIT" not in encodings[name], name
    for name in (schema.SAMPLE_ID, schema.STEP, "top_pos.list.element", "hit_runs.list.element",
                 "token_loss.list.element"):
        assert "RLE_DICTIONARY" in encodings[name], name  # the rest as pyarrow does: dictionary
    assert pq.ParquetFile(path, page_checksum_verification=True).read().equals(table)
    polars = pl.read_parquet(path)
    assert polars.equals(pl.from_arrow(table))
    sums = duckdb.sql(f"SELECT sum(loss::DOUBLE), sum(tail_loss::DOUBLE), sum(list_sum(top_loss)), "
                      f"sum(list_sum(top_pos)) FROM read_parquet('{path}')").fetchall()[0]
    want = (table.column("loss").to_numpy().astype(np.float64).sum(),
            table.column("tail_loss").to_numpy().astype(np.float64).sum(),
            table.column("top_loss").combine_chunks().values.to_numpy().astype(np.float64).sum(),
            table.column("top_pos").combine_chunks().values.to_numpy().astype(np.int64).sum())
    assert np.allclose(sums, want, rtol=1e-9)


def test_the_options_name_every_column_of_the_schema_the_shim_writes() -> None:
    options = column_encodings(schema.LOG_SCHEMA)
    named = set(options["use_dictionary"]) | set(options["column_encoding"])
    assert not set(options["use_dictionary"]) & set(options["column_encoding"])
    assert named | {"top_loss.list.element"} == {  # plain: named by neither
        f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in schema.LOG_SCHEMA}
    wide = schema.LOG_SCHEMA.set(schema.LOG_SCHEMA.get_field_index(schema.TOP_POS),
                                 pa.field(schema.TOP_POS, pa.list_(pa.uint32())))
    assert "top_pos.list.element" in column_encodings(wide)["use_dictionary"]  # positions of 65,536 and more


def test_scores_are_the_same_bits_whatever_the_parts_encoding(tmp_path: Path) -> None:
    """The sample logs, written with pyarrow's default encodings (dictionary-encoded floats), and
    the same rows rewritten as the shim writes parts now: identical scores (the default
    `extractable` signal and forget events)."""
    rewritten = tmp_path / "rewritten"
    rewritten.mkdir()
    for part in sorted(SAMPLE_LOGS.glob("*.parquet")):
        table = pq.read_table(part)
        write_parquet(table, rewritten / part.name)
        assert pq.read_table(rewritten / part.name).equals(table)
        carto_keys = {k: v for k, v in pq.read_metadata(part).metadata.items() if k.startswith(b"carto.")}
        assert carto_keys and carto_keys.items() <= pq.read_metadata(rewritten / part.name).metadata.items()
    shutil.copy(SAMPLE_LOGS / "README.md", rewritten / "README.md")
    for extra in ([], ["--memorization", "forgets"]):
        frames = []
        for logs in (SAMPLE_LOGS, rewritten):
            out = tmp_path / f"{logs.name}{len(extra)}.parquet"
            result = runner.invoke(app, ["score", str(logs), "--out", str(out), *extra])
            assert result.exit_code == 0, result.output
            frames.append(pl.read_parquet(out))
        assert frames[0].equals(frames[1])
        assert frames[0]["memorization"].null_count() < frames[0].height
