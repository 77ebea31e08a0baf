"""The track table: its columns (OpenFace names), CSV / Parquet writers that stream row chunks, a reader.

One row per (processed frame, face), ordered by frame then ``face_id``: :data:`BASE_COLUMNS`
(``frame, timestamp, face_id, confidence, success``), then in this order what the bundle gives:
``pose_Tx, pose_Ty, pose_Tz`` (mm), ``pose_Rx, pose_Ry, pose_Rz`` (radians), the gaze columns,
``AUxx_r`` (intensity 0..5), ``AUxx_c`` (presence), ``expression_<label>`` probabilities and
``expression`` (the top label), ``valence``, ``arousal`` (see ``docs/TRACK_COLUMNS.md``).
A chunk of rows is a dict of numpy columns of equal length. Each table has a metadata file beside
it (:func:`metadata_path`: where each column group comes from, units, conventions, the AU table);
a Parquet table also carries it in its schema metadata (key ``video_fer``).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from video_fer.errors import ConfigError, VideoFerError
from video_fer.io import atomic_path, atomic_write, reporting_write_errors
from video_fer.track.default_columns import group_columns

BASE_COLUMNS = ("frame", "timestamp", "face_id", "confidence", "success")
INTEGER_COLUMNS = ("frame", "face_id", "success")
FORMATS = ("csv", "parquet")


def au_columns(aus: Sequence[int], suffix: str) -> list[str]:
    """OpenFace names: ``[1, 12] , "_c"`` -> ``["AU01_c", "AU12_c"]``."""
    return [f"AU{int(au):02d}{suffix}" for au in aus]


def expression_columns(labels: Sequence[str]) -> list[str]:
    return [f"expression_{label}" for label in labels]


def column_names(bundle) -> list[str]:
    """Every column the table of ``bundle`` has, in order (see the module doc)."""
    specs, defaults = bundle.specs, bundle.default_columns
    columns = list(BASE_COLUMNS)
    for group in ("pose", "gaze"):
        if group in defaults:
            columns += group_columns(group)
    if "au" in defaults:
        columns += group_columns("au")
    if "au_intensity" in specs:
        columns += au_columns(specs["au_intensity"].names, "_r")
    if "au" in specs:
        columns += au_columns(specs["au"].names, "_c")
    if "expression" in defaults:
        columns += group_columns("expression")
    if "expression" in specs:
        columns += expression_columns(specs["expression"].names) + ["expression"]
    if "va" in specs:
        columns += ["valence", "arousal"]
    return columns


def metadata_path(table_path: str | os.PathLike) -> Path:
    """Where a table's metadata goes: ``clip.csv`` -> ``clip.meta.json``."""
    path = Path(table_path)
    return path.with_name(path.stem + ".meta.json")


def write_metadata(table_path: str | os.PathLike, metadata: Mapping) -> Path:
    """Write a table's metadata JSON beside it (atomically); returns its path."""
    path = metadata_path(table_path)
    with atomic_write(path) as handle:
        json.dump(metadata, handle, indent=2)
    return path


def concatenate_columns(chunks: Sequence[Mapping[str, np.ndarray]], columns: Sequence[str]) -> dict[str, np.ndarray]:
    if not chunks:
        return {name: np.zeros(0) for name in columns}
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in columns}


def as_table(columns: dict[str, np.ndarray]):
    """pandas DataFrame when pandas is installed, else the dict of numpy columns."""
    try:
        import pandas
    except ImportError:
        return columns
    return pandas.DataFrame(columns)


# ------------------------------------------------------------------------------ writers
def _format_column(values: np.ndarray, name: str) -> list[str]:
    """One column as CSV text: integers as such, NaN as an empty cell, seconds to the microsecond."""
    if values.dtype == object:
        return [str(v) for v in values]
    if values.dtype.kind in "iub":
        return [str(v) for v in values.tolist()]
    pattern = "{:.6f}" if name == "timestamp" else "{:.6g}"
    return ["" if v != v else pattern.format(v) for v in values.tolist()]


class CsvTableWriter:
    """Streams row chunks to a CSV file (temp file beside it, renamed on :meth:`close`)."""

    def __init__(self, path: Path, columns: Sequence[str], metadata: Mapping | None = None):
        import csv

        self.path, self.columns = Path(path), list(columns)
        self._context = _atomic_text(self.path)
        self._handle = self._context.__enter__()
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._writer.writerow(self.columns)

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        with reporting_write_errors(self.path):  # e.g. the disk fills mid-clip: name the table
            self._writer.writerows(zip(*[_format_column(chunk[name], name) for name in self.columns]))

    def close(self, ok: bool = True) -> None:
        if ok:
            self._context.__exit__(None, None, None)
        else:
            self._context.__exit__(VideoFerError, VideoFerError("aborted"), None)


@contextlib.contextmanager
def _atomic_text(path: Path):
    with atomic_write(path, "w") as handle:
        yield handle


class ParquetTableWriter:
    """Streams row chunks to a Parquet file, one row group per chunk (needs pyarrow); ``metadata`` goes into the
    schema's metadata as JSON under the key ``video_fer``."""

    def __init__(self, path: Path, columns: Sequence[str], metadata: Mapping | None = None):
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError("--format parquet needs pyarrow (pip install pyarrow); or use --format csv") from None
        self.path, self.columns = Path(path), list(columns)
        self.metadata = metadata
        self._context = atomic_path(self.path)
        self._tmp = self._context.__enter__()
        self._writer = None

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = [pa.array(chunk[name].tolist() if chunk[name].dtype == object else chunk[name])
                  for name in self.columns]
        table = pa.Table.from_arrays(arrays, names=self.columns)
        if self.metadata is not None:
            table = table.replace_schema_metadata({"video_fer": json.dumps(self.metadata)})
        with reporting_write_errors(self.path):
            if self._writer is None:
                self._writer = pq.ParquetWriter(str(self._tmp), table.schema)
            self._writer.write_table(table)

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.close()
        if ok:
            self._context.__exit__(None, None, None)
        else:
            self._context.__exit__(VideoFerError, VideoFerError("aborted"), None)


def open_writer(path: Path, columns: Sequence[str], fmt: str, metadata: Mapping | None = None):
    """A streaming writer; ``metadata`` is kept in the file where the format allows (Parquet)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return (CsvTableWriter if fmt == "csv" else ParquetTableWriter)(path, columns, metadata)


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a track CSV back as numpy columns (strings for ``expression``, NaN for empty cells)."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    table = {}
    for k, name in enumerate(header):
        values = [row[k] for row in body]
        if name == "expression":
            table[name] = np.asarray(values, dtype=object)
        elif name in INTEGER_COLUMNS:
            table[name] = np.asarray([int(v) for v in values], dtype=np.int64)
        else:
            table[name] = np.asarray([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    return table
