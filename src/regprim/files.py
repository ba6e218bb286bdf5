"""The one atomic file write (a temporary file renamed into place) and the safetensors content
it writes; the run folder, edit folders, checkpoints and the baseline cache all use it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

Content = bytes | str | Callable[[Path], Any]


def atomic_write(path: Path, content: Content) -> Path:
    """Write ``content`` (bytes, text, or a function that writes the file it is given) to a
    temporary file beside ``path`` and rename it into place: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)  # safetensors writes 0600: every file of a folder gets the same mode
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:  # a full or failing disk: name the file (a writer may not)
        tmp.unlink(missing_ok=True)
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safetensors_content(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None):
    """Content for :func:`atomic_write`: ``tensors`` (moved to the CPU) as safetensors."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return lambda path: save_file(cpu, path, metadata)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file, or of every file in a folder (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def sources_hash(paths: list[Path]) -> str:
    """One SHA-256 of the files and folders a model is read from (of one path: its
    :func:`content_hash`, as runs recorded it before models had several sources)."""
    if len(paths) == 1:
        return content_hash(paths[0])
    return hashlib.sha256("".join(content_hash(p) for p in paths).encode()).hexdigest()
