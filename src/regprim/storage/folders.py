"""regprim's own folders (runs, edits, datasets): the lock that keeps a second writer out, the
checks made before any work (where, how much room, what must not be deleted), and the staged
write that puts a whole folder with its manifest in place or leaves the old one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from regprim.files import Content, atomic_write, sha256_file

MANIFEST = "manifest.json"


class RunFolderBusy(RuntimeError):
    """Another process holds the lock of a run folder."""


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of run folder ``out`` (a lock file beside it, ``.NAME.lock``,
    with the holder's pid) for the block; refuse at once if another process holds it. The lock
    file is removed when the block ends, however it ends: a holder that finds its file
    replaced or removed (by a holder that just finished) takes the new one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "?"
            os.close(handle)
            msg = (
                f"another regprim process (pid {holder}) is writing {out}; wait for it to "
                "finish or choose another --out"
            )
            raise RunFolderBusy(msg) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                break
        os.close(handle)  # unlinked by the holder before us: lock the file there now
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held, so no one locks a file about to go
        os.close(handle)  # closing releases the lock


def check_output(out: Path, overwrite: bool, marker: str) -> None:
    """Fail early, before any work, if ``out`` holds something we must not replace or cannot
    be written (``marker``: the file that makes a folder regprim's own, e.g. ``edit.json``)."""
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        msg = f"output {out} lies under {parent}, which is a file; choose another --out"
        raise FileExistsError(msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"cannot write {out}: {parent} is not writable; choose another --out"
        raise PermissionError(msg)
    if not out.exists():
        return
    if not out.is_dir():
        msg = f"output {out} is a file, not a folder; choose another --out"
        raise FileExistsError(msg)
    if os.path.ismount(out):
        msg = (
            f"output {out} is a mount point; regprim replaces its folder as a whole, which a "
            "mount point does not allow: choose a folder inside it"
        )
        raise FileExistsError(msg)
    if not any(out.iterdir()):
        return
    foreign = not_written_by_regprim(out, marker)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        msg = (
            f"output folder {out} holds files that regprim did not write ({shown}); it is not "
            "replaced, with or without --overwrite: choose an empty or new --out"
        )
        raise FileExistsError(msg)
    if overwrite:
        return
    what = f"an earlier {marker}"
    old = json.loads((out / marker).read_text())
    if {"model", "layer", "created"} <= set(old):  # a run's config.json
        what = f"a run of {old['model']}/{old['layer']} from {old['created']}"
    msg = (
        f"output folder {out} already holds {what}; pass --overwrite (from Python: "
        "overwrite=True) or choose another --out"
    )
    raise FileExistsError(msg)


def not_written_by_regprim(folder: Path, marker: str) -> list[str]:
    """What in ``folder`` is not one of regprim's own files: everything, unless it holds its
    ``marker`` and a readable ``manifest.json``; else every entry the manifest does not list (a
    subfolder, a file a user put there) and every file whose content is no longer what regprim
    wrote (its SHA-256 differs from the manifest's: a hand-edited file). ``--overwrite``
    replaces only a folder with none."""
    entries = sorted(p.name for p in folder.iterdir())
    try:
        listed = dict(json.loads((folder / MANIFEST).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return entries
    if marker not in listed:
        return entries
    foreign = []
    for name in entries:
        path = folder / name
        if name == MANIFEST:
            continue
        if name not in listed or not path.is_file():
            foreign.append(name)
        elif sha256_file(path) != listed[name]:
            foreign.append(f"{name} (changed since regprim wrote it)")
    return foreign


def check_space(out: Path, need: int) -> None:
    """Refuse, before the work, a run that the disk under ``out`` cannot hold (twice: the new
    run is staged beside the old one)."""
    parent = next((p for p in Path(out).parents if p.exists()), Path("."))
    free = shutil.disk_usage(parent).free
    if free < 2 * need:
        msg = (
            f"{parent} has {free / 2**20:.0f} MiB free; this run needs about "
            f"{2 * need / 2**20:.0f} MiB there (its tensors, staged beside any old run): free "
            "some space or choose another --out"
        )
        raise OSError(msg)


def remove_stale_staging(out: Path) -> None:
    """Staging folders of ``out`` left by processes that no longer run (killed mid-write)."""
    for staging in out.parent.glob(f".{out.name}.writing-*"):
        pid = staging.name.rsplit("-", 1)[1]
        alive = pid.isdigit() and pid != str(os.getpid()) and Path(f"/proc/{pid}").exists()
        if not alive:
            shutil.rmtree(staging, ignore_errors=True)


def manifest_content(folder: Path) -> str:
    """``manifest.json`` for the files of ``folder``: the SHA-256 of each."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return json.dumps(
        {"sha256": {name: sha256_file(folder / name) for name in files if name != MANIFEST}},
        indent=2,
    )


def write_folder(out: Path, files: dict[str, Content], overwrite: bool, marker: str) -> Path:
    """Write ``files`` ({file name: content}) and their manifest to ``out``: assembled in this
    process's staging folder and renamed into place as a whole (the old folder, if replaced,
    is removed only after the new one is in place). ``marker`` is the file that makes ``out``
    one of regprim's folders (``config.json`` for a run). Call it under :func:`lock`."""
    out = Path(out)
    check_output(out, overwrite, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging = out.parent / f".{out.name}.writing-{os.getpid()}"
    staging.mkdir()
    try:
        for name, content in files.items():
            atomic_write(staging / name, content)
        atomic_write(staging / MANIFEST, manifest_content(staging))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(old, out)  # the old folder goes back: nothing is lost
                raise
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
