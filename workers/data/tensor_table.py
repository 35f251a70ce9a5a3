"""The one Parquet codec for labelled images: prepared datasets (uint8) and committed sets (float32).

Columns: ``class_id`` int32, ``class_name`` string, optionally ``index`` int32 (position
within its class), and ``image``, a fixed-shape tensor [C, H, W] of the images' dtype.
Any Parquet reader (pyarrow, pandas, DuckDB, Hugging Face datasets) opens the result.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"dmcondense"


def tensor_table(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    index: bool = False,
    metadata: dict[str, Any] | None = None,
) -> pa.Table:
    """Images [N, C, H, W] (any numeric dtype) and class ids -> a table (rows keep their order).

    ``index`` adds each image's position within its class; ``metadata`` goes into the
    schema under ``dmcondense`` as JSON.
    """
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"images must be [N, C, H, W] with one label each, got {images.shape} and {len(labels)} labels")
    ids = np.asarray(labels, dtype=np.int32)
    shape = list(images.shape[1:])
    flat = pa.array(np.ascontiguousarray(images).reshape(-1))  # a view as one flat array
    storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape)))
    columns: dict[str, pa.Array] = {
        "class_id": pa.array(ids, pa.int32()),
        "class_name": pa.array([class_names[i] for i in ids], pa.string()),
    }
    if index:
        columns["index"] = pa.array(_within_class_index(ids), pa.int32())
    tensor_type = pa.fixed_shape_tensor(flat.type, shape)
    columns["image"] = pa.ExtensionArray.from_storage(tensor_type, storage)
    table = pa.table(columns)
    if metadata is not None:
        table = table.replace_schema_metadata({META_KEY: json.dumps(metadata, sort_keys=True).encode()})
    return table


def _within_class_index(ids: np.ndarray) -> np.ndarray:
    index = np.zeros(len(ids), dtype=np.int32)
    for c in np.unique(ids):
        rows = np.flatnonzero(ids == c)
        index[rows] = np.arange(len(rows), dtype=np.int32)
    return index


def table_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, C, H, W] in the stored dtype, class ids int64) of a table."""
    column = table.column("image")
    shape = list(column.type.shape)
    dtype = column.type.value_type.to_pandas_dtype()
    labels = table.column("class_id").to_numpy().astype(np.int64)
    if column.num_chunks == 0 or table.num_rows == 0:
        return np.empty([0, *shape], dtype=dtype), labels
    storage = column.combine_chunks().storage
    images = storage.flatten().to_numpy(zero_copy_only=False).reshape([-1, *shape])
    return images, labels


def table_metadata(table: pa.Table) -> dict[str, Any]:
    return json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))
