"""Files are the interface between stages: atomic writes, per-item records, stage fingerprints.

Every file is written to a temporary name in the same folder and renamed into
place by ``write_atomic`` (tables, images, JSON, checkpoints, figures alike), so a
reader (or a resumed run) never sees half a file. Long stages keep
one small JSON record per finished item, so a kill loses at most the items in
flight, and a rerun skips what is done.

A file damaged outside these writes (a crash on a network file system, a Drive sync
conflict, a full disk) is met where it is read: a per-item output (a record, the
files a record stands for, a training result) is moved aside as ``<name>.damaged``
(``set_aside``) and redone; a fingerprint is a clear error (``read_fingerprint``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from safetensors import SafetensorError, safe_open

from sgid_utils.errors import CorruptFileError, StaleOutputsError
from sgid_utils.params.load import upgrade_fingerprint

_UMASK = os.umask(0)
os.umask(_UMASK)
# Fault injection for the kill-and-resume tests: SIGKILL this process right after its N-th atomic write. The count
# is an itertools.count, whose next() is atomic under the GIL: writer threads (generation's PNGs) share it.
_KILL_AFTER = int(os.environ.get("SGID_FAULT_KILL_AFTER_WRITES", 0))
_writes = itertools.count(1)


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary path)`` in the target's folder, then rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions a plain open() would
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if next(_writes) == _KILL_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


def write_json(path: Path, obj: Any) -> Path:
    return write_atomic(path, lambda t: t.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str)))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


PATH_COLUMNS = ("path", "source_path", "edges")


def write_table(path: Path, df: pd.DataFrame, root: Path | None = None, caption: str | None = None) -> Path:
    """Write a table as parquet (or csv/md by suffix), atomically.

    With ``root`` (the run directory), file paths under it are stored relative to it, so a run
    directory can move (another Drive mount, another machine) and its tables stay valid. A markdown
    table may have a ``caption`` paragraph above it.
    """
    path = Path(path)
    if root is not None:
        df = df.copy()
        for col in PATH_COLUMNS:
            if col in df:
                df[col] = [_relative(v, Path(root)) for v in df[col]]
    if path.suffix == ".parquet":
        return write_atomic(path, lambda t: df.to_parquet(t, index=False))
    if path.suffix == ".csv":
        return write_atomic(path, lambda t: df.to_csv(t, index=False))
    if path.suffix == ".md":
        head = f"{caption}\n\n" if caption else ""
        return write_atomic(path, lambda t: t.write_text(head + df.to_markdown(index=False) + "\n"))
    raise ValueError(f"unsupported table format: {path}")


def _relative(value: str, root: Path) -> str:
    p = Path(value)
    return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else value


def read_table(path: Path, root: Path | None = None) -> pd.DataFrame:
    """Read a table; with ``root``, relative file paths come back absolute (joined to the run directory)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run the stage that writes it first (see the README's stage list)"
        )
    if path.suffix == ".csv" and not _ends_a_line(path):
        raise ValueError("cut short: its last line is unfinished")  # a cut-short CSV otherwise reads as fewer rows
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if root is not None:
        for col in PATH_COLUMNS:
            if col in df:
                df[col] = [v if Path(v).is_absolute() else str(Path(root) / v) for v in df[col]]
    return df


def _ends_a_line(path: Path) -> bool:
    """Whether a text file ends with a line end, as every table this package writes does (an empty file does not)."""
    with Path(path).open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def write_png(path: Path, image: Image.Image, compress_level: int = 6) -> Path:
    """PNG without timestamps, so identical pixels give identical bytes (at one ``compress_level``: zlib's 0-9, PIL's
    default 6; the level changes the bytes and the time, never the pixels)."""
    return write_atomic(path, lambda t: image.save(t, format="PNG", compress_level=compress_level))


def write_figure(path: Path, fig: Any) -> Path:
    """A matplotlib figure as PNG, the one format and resolution every figure of a run has."""
    return write_atomic(path, lambda t: fig.savefig(t, format="png", dpi=120, bbox_inches="tight"))


def write_bytes(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda t: t.write_bytes(data))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    def write(t: Path) -> None:
        with t.open("wb") as f:
            np.savez(f, **arrays)

    return write_atomic(path, write)


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda t: t.write_text(text))


PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"


def reason(exc: BaseException) -> str:
    """An exception as a short reason for a one-line message."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def damage(path: Path) -> str | None:
    """Why a per-item output file is damaged, or None when it looks whole: empty, or (by kind) not a PNG from its
    signature to its end chunk, not a zip archive (``.npz``, ``.pt``) with its closing directory, not a
    safetensors file its header covers, not JSON. Cheap: a
    PNG costs two 12-byte reads, so a rerun checks every finished item; a PNG garbled inside is met when decoded."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    if path.suffix == ".png":
        with path.open("rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 12))
            ok = head == PNG_SIGNATURE and f.read(12) == PNG_END
        return None if ok else "not a whole PNG: cut short or garbled"
    if path.suffix in (".npz", ".pt"):
        return None if zipfile.is_zipfile(path) else "not a whole zip archive: cut short or garbled"
    if path.suffix == ".safetensors":  # its header names every tensor's extent: safetensors checks the file covers them
        try:
            with safe_open(path, "np"):
                return None
        except SafetensorError as exc:
            return reason(exc)
    if path.suffix == ".json":
        try:
            read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            return reason(exc)
    return None


def set_aside(path: Path, why: str) -> Path:
    """Move a damaged file out of the way as ``<name>.damaged`` (``.damaged2``, ... if one is there already), never
    deleting it, and say so in one line; the caller redoes its work. Returns where it went."""
    path = Path(path)
    target, n = path.with_name(f"{path.name}.damaged"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another shard moved it a moment earlier
        return target
    print(f"[sgid] {path} is damaged ({why}): moved aside as {target.name}", file=sys.stderr)
    return target


def read_record(path: Path) -> Any | None:
    """A per-item record (JSON): its content; None when there is none or it is damaged (then set aside)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        set_aside(path, reason(exc))
        return None


class ItemStore:
    """One JSON record per finished item in ``folder``; a readable record means 'done'.

    ``outputs(item_id, record)``: the files the record stands for (a candidate's images); the item is done only while
    each exists and looks whole (``damage``). A damaged record or output is set aside and the item is done again; a
    missing output (set aside by a stage that read it) also makes the item to do.
    """

    def __init__(self, folder: Path, outputs: Callable[[str, Any], Iterable[Path]] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.outputs = outputs
        self._checked: dict[str, Any] = {}

    def _path(self, item_id: str) -> Path:
        return self.folder / f"{item_id}.json"

    def _whole(self, item_id: str) -> bool:
        """Whether the item is done: its record reads, and every file it stands for is there and looks whole."""
        if item_id in self._checked:
            return True
        record = read_record(self._path(item_id))
        if record is None:
            return False
        for file in self.outputs(item_id, record) if self.outputs else ():
            if not file.exists():
                return False
            if why := damage(file):
                set_aside(file, why)
                return False
        self._checked[item_id] = record
        return True

    def done(self, item_id: str) -> bool:
        return self._whole(item_id)

    def todo(self, item_ids: Iterable[str]) -> list[str]:
        present = {p.stem for p in self.folder.glob("*.json")}
        return [i for i in item_ids if i not in present or not self._whole(i)]

    def put(self, item_id: str, record: Any) -> None:
        write_json(self._path(item_id), record)
        self._checked.pop(item_id, None)  # read back from the file, as a rerun would (sorted keys)

    def get(self, item_id: str) -> Any:
        if item_id in self._checked:
            return self._checked[item_id]
        try:
            return read_json(self._path(item_id))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{self._path(item_id)} cannot be read ({reason(exc)}); rerun the stage: it "
                                   "moves the damaged record aside and redoes that item") from None

    def records(self, item_ids: Iterable[str]) -> list[Any]:
        return [self.get(i) for i in item_ids]

    def complete(self, item_ids: Iterable[str]) -> bool:
        """True once every item has a record (other shards may still be working otherwise)."""
        return not self.todo(item_ids)


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The fingerprint keys whose values differ (or that only one side has)."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def read_fingerprint(file: Path, outputs: str | None = None) -> dict[str, Any]:
    """A stage's recorded fingerprint; a damaged one is a clear error. It is not rebuilt: it is the only record of the
    params that made ``outputs`` (default: its folder and every later stage's), so nothing could check them."""
    file = Path(file)
    outputs = outputs or f"{file.parent} and every later stage's folder"
    try:
        recorded = read_json(file)
    except (ValueError, UnicodeDecodeError) as exc:
        recorded, why = None, reason(exc)
    else:
        why = "not a JSON object"
    if not isinstance(recorded, dict):
        raise CorruptFileError(
            f"{file} cannot be read ({why}): it records the params that made {outputs}, which cannot be checked "
            f"without it. If they were made with the params now in force, delete {file} and rerun (it is written "
            f"again from them); otherwise delete {outputs} to recompute.")
    return upgrade_fingerprint(recorded)  # a run recorded under renamed keys still resumes


def pin_fingerprint(file: Path, fingerprint: dict[str, Any], stage: str, outputs: str | None = None) -> None:
    """Record in ``file`` the params that produce a stage folder (or, ``outputs``, part of it); refuse to mix
    outputs of different params."""
    file = Path(file)
    stage_dir = file.parent
    outputs = outputs or f"{stage_dir} and every later stage's folder"
    current = json.loads(json.dumps(fingerprint, default=str))
    if file.exists():
        before = read_fingerprint(file, outputs)
        changed = changed_keys(before, current)
        if changed:
            detail = "; ".join(f"{k}: was {before.get(k)!r}, now {current.get(k)!r}" for k in changed)
            raise StaleOutputsError(
                f"Stage '{stage}' already has outputs in {stage_dir} made with other params or code ({detail}). "
                f"Use a new run.dir (e.g. --run-dir or --set run.dir=...), or delete {outputs} to recompute."
            )
        return
    write_json(file, current)
