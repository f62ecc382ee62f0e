"""Files are the interface between stages: atomic writes, per-item records, stage fingerprints.

Every file is written to a temporary name in the same folder and renamed into
place by ``write_atomic`` (tables, images, JSON, checkpoints, figures alike), so a
reader (or a resumed run) never sees half a file. Long stages keep
one small JSON record per finished item, so a kill loses at most the items in
flight, and a rerun skips what is done.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from sgid_utils.errors import StaleOutputsError

_UMASK = os.umask(0)
os.umask(_UMASK)
# Fault injection for the kill-and-resume tests: SIGKILL this process right after its N-th atomic write.
_KILL_AFTER = int(os.environ.get("SGID_FAULT_KILL_AFTER_WRITES", 0))
_writes = 0


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary path)`` in the target's folder, then rename the result onto ``path``."""
    global _writes
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
    _writes += 1
    if _writes == _KILL_AFTER:
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
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if root is not None:
        for col in PATH_COLUMNS:
            if col in df:
                df[col] = [v if Path(v).is_absolute() else str(Path(root) / v) for v in df[col]]
    return df


def write_png(path: Path, image: Image.Image) -> Path:
    """PNG without timestamps, so identical pixels give identical bytes."""
    return write_atomic(path, lambda t: image.save(t, format="PNG"))


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


class ItemStore:
    """One JSON record per finished item in ``folder``; the presence of a record means 'done'."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, item_id: str) -> Path:
        return self.folder / f"{item_id}.json"

    def done(self, item_id: str) -> bool:
        return self._path(item_id).exists()

    def todo(self, item_ids: Iterable[str]) -> list[str]:
        finished = {p.stem for p in self.folder.glob("*.json")}
        return [i for i in item_ids if i not in finished]

    def put(self, item_id: str, record: Any) -> None:
        write_json(self._path(item_id), record)

    def get(self, item_id: str) -> Any:
        return read_json(self._path(item_id))

    def records(self, item_ids: Iterable[str]) -> list[Any]:
        return [self.get(i) for i in item_ids]

    def complete(self, item_ids: Iterable[str]) -> bool:
        """True once every item has a record (other shards may still be working otherwise)."""
        return not self.todo(item_ids)


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The fingerprint keys whose values differ (or that only one side has)."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def pin_fingerprint(file: Path, fingerprint: dict[str, Any], stage: str, outputs: str | None = None) -> None:
    """Record in ``file`` the params that produce a stage folder (or, ``outputs``, part of it); refuse to mix
    outputs of different params."""
    file = Path(file)
    stage_dir = file.parent
    outputs = outputs or f"{stage_dir} and every later stage's folder"
    current = json.loads(json.dumps(fingerprint, default=str))
    if file.exists():
        before = read_json(file)
        changed = changed_keys(before, current)
        if changed:
            detail = "; ".join(f"{k}: was {before.get(k)!r}, now {current.get(k)!r}" for k in changed)
            raise StaleOutputsError(
                f"Stage '{stage}' already has outputs in {stage_dir} made with other params or code ({detail}). "
                f"Use a new run.dir (e.g. --run-dir or --set run.dir=...), or delete {outputs} to recompute."
            )
        return
    write_json(file, current)
