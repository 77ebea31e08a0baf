"""MediaPipe's canonical face and the rigid landmarks its own geometry pipeline fits, read from ``face_landmarker.task``.

The bundle holds ``geometry_pipeline_metadata_landmarks.binarypb``, a protocol buffer: field 1 is
the canonical mesh (its field 3 is the vertex buffer x, y, z, u, v per vertex, in cm, x to the
image right, y up, z towards the viewer), fields 2 are weighted landmark references (id, weight)
of the Procrustes fit MediaPipe's face geometry uses. Only the wire format is parsed here (no
protobuf dependency): varints, length-delimited and 32/64-bit fields.
"""
from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from video_fer.errors import ModelFileError

GEOMETRY_IN_BUNDLE = "geometry_pipeline_metadata_landmarks.binarypb"
CANONICAL_VERTICES = 468


@dataclass(frozen=True)
class FaceGeometry:
    """MediaPipe's face geometry metadata.

    Attributes:
        canonical: float64 ``(468, 3)`` canonical face, cm, x image-right, y up, z towards the viewer.
        landmark_ids: int64 ``(K,)`` rigid landmarks MediaPipe's Procrustes uses (K = 33 in the shipped model).
        landmark_weights: float64 ``(K,)`` their weights.
    """

    canonical: np.ndarray
    landmark_ids: np.ndarray
    landmark_weights: np.ndarray


def protobuf_fields(buffer: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Protocol-buffer wire format -> ``(field number, wire type, value)`` (varints as int, others as bytes)."""
    def varint(position: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = buffer[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, position

    position = 0
    while position < len(buffer):
        key, position = varint(position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = varint(position)
        elif wire == 2:
            length, position = varint(position)
            value, position = buffer[position:position + length], position + length
        elif wire == 5:
            value, position = buffer[position:position + 4], position + 4
        elif wire == 1:
            value, position = buffer[position:position + 8], position + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


@lru_cache(maxsize=4)
def read_face_geometry(model_path: str | os.PathLike) -> FaceGeometry:
    """The canonical mesh and Procrustes landmark basis of a ``face_landmarker.task`` bundle (cached per path).

    Raises:
        ModelFileError: naming the file, when it is not such a bundle or its metadata is not as expected.
    """
    try:
        with zipfile.ZipFile(model_path) as bundle:
            metadata = bundle.read(GEOMETRY_IN_BUNDLE)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise ModelFileError(f"{model_path}: not a MediaPipe face_landmarker.task bundle with {GEOMETRY_IN_BUNDLE} "
                             f"({error}); download the model again") from error
    floats: list[float] = []
    ids, weights = [], []
    try:
        for number, _, value in protobuf_fields(metadata):
            if number == 1:  # the canonical mesh
                for field, wire, item in protobuf_fields(value):
                    if field == 3 and wire == 5:
                        floats.append(struct.unpack("<f", item)[0])
                    elif field == 3 and wire == 2:  # packed encoding
                        floats.extend(np.frombuffer(item, "<f4").tolist())
            elif number == 2:  # one weighted landmark reference
                entry = {field: item for field, _, item in protobuf_fields(value)}
                ids.append(int(entry.get(1, 0)))
                weights.append(struct.unpack("<f", entry[2])[0] if 2 in entry else 0.0)
    except (ValueError, IndexError, struct.error) as error:
        raise ModelFileError(f"{model_path}: unreadable {GEOMETRY_IN_BUNDLE} ({error}); download the model again") from error
    vertices = np.asarray(floats, dtype=np.float64)
    if vertices.size != CANONICAL_VERTICES * 5 or not ids:
        raise ModelFileError(f"{model_path}: geometry metadata has {vertices.size // 5} canonical vertices and "
                             f"{len(ids)} Procrustes landmarks; expected {CANONICAL_VERTICES} and some")
    return FaceGeometry(vertices.reshape(-1, 5)[:, :3], np.asarray(ids, np.int64), np.asarray(weights, np.float64))


def geometry_of(model_path: str | os.PathLike) -> FaceGeometry:
    """:func:`read_face_geometry` of a path given as str or Path (one cache entry per resolved path)."""
    return read_face_geometry(str(Path(model_path).resolve()))


__all__ = ["FaceGeometry", "GEOMETRY_IN_BUNDLE", "geometry_of", "protobuf_fields", "read_face_geometry"]
