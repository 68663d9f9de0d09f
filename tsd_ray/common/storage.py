"""Local paths and cloud URIs (``s3://``, ``gs://``) through pyarrow filesystems.

Everything that writes features, checkpoints or ledgers goes through :func:`resolve`, so a
run works unchanged on a laptop folder and on a bucket. For S3-compatible servers (MinIO,
moto) set ``AWS_ENDPOINT_URL`` (pyarrow reads it) or put ``?endpoint_override=…`` in the URI.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def expand(path: str | os.PathLike) -> str:
    """``~`` and relative local paths -> absolute; URIs unchanged."""
    p = str(path)
    if is_uri(p):
        return p
    return str(Path(p).expanduser().resolve())


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    u = str(uri)
    if not is_uri(u):
        return pafs.LocalFileSystem(), expand(u)
    fs, path = pafs.FileSystem.from_uri(u)
    return fs, path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI (keeps any ``?query`` at the end)."""
    u = str(uri)
    if is_uri(u):
        base, sep, query = u.partition("?")
        out = posixpath.join(base, *parts)
        return out + (sep + query if sep else "")
    return os.path.join(u, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a file so readers never see a partial one (local: temp + rename; S3 puts are atomic)."""
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if is_uri(str(uri)) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def read_json(uri: str) -> dict:
    return json.loads(read_bytes(uri).decode())


def write_json_atomic(uri: str, obj: object) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly under a folder (sorted URIs/paths); empty when the folder is missing."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    sel = pafs.FileSelector(path, recursive=False)
    names = sorted(
        posixpath.basename(i.path) for i in fs.get_file_info(sel) if i.type == pafs.FileType.File
    )
    return [join(uri, n) for n in names if n.endswith(suffix)]


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)
