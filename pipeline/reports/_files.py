"""Files in the reports folder, written without following symbolic links.

The reports folder is inside the project, which the pipeline does not trust:
git keeps symbolic links, so a project can commit
``.pipeline/reports/test.log -> ~/.bashrc``, and a plain ``open(path, "w")``
would then overwrite the link's target. So every file is created fresh: an
existing entry of that name is removed first (a link is removed, never
followed), and the new file is opened with ``O_EXCL | O_NOFOLLOW``. The
folder itself is checked by ``check_folder`` before a run.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ..errors import UsageError
from ..secrets import redact

NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_folder(project: Path, folder: Path) -> None:
    """Raise UsageError unless ``folder`` and every folder between the project
    and it are real folders (or missing), not symbolic links.

    For a folder outside the project, only the folder itself is checked.
    """
    folder = Path(os.path.normpath(folder))
    try:
        relative = folder.relative_to(project)
    except ValueError:
        candidates = [folder]
    else:
        candidates = [
            project.joinpath(*relative.parts[: index + 1])
            for index in range(len(relative.parts))
        ]
    for path in candidates:
        if path.is_symlink():
            raise UsageError(
                f"the reports folder {folder} is reached through a symbolic "
                f"link: {path} -> {os.readlink(path)}",
                hint="remove the link (reports are written only into a real "
                "folder), or set reports_dir to another folder",
            )
        if path.exists() and not path.is_dir():
            raise UsageError(
                f"the reports folder {folder} cannot be created: {path} is a file",
                hint="remove that file, or set reports_dir to another folder",
            )


def remove(path: Path) -> bool:
    """Remove the file or symbolic link at ``path``; return whether one existed.

    A link is removed itself, never its target. A folder raises UsageError,
    since the pipeline only ever writes files.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        raise UsageError(
            f"{path} is a folder, where the pipeline writes a file",
            hint="remove or rename that folder",
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """Create ``path`` as a new, empty text file and open it for writing."""
    remove(path)
    descriptor = os.open(path, NEW_FILE_FLAGS, 0o666)
    with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
        yield handle


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file at ``path``, replacing any file or link there."""
    remove(path)
    descriptor = os.open(path, NEW_FILE_FLAGS, 0o666)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to a new file at ``path``, replacing any file or link.

    Every secret value resolved in this process is replaced first.
    """
    return write_bytes(path, redact(text).encode("utf-8"))


@contextmanager
def private_folder(folder: Path) -> Iterator[Path]:
    """Yield a new folder inside ``folder`` that only this user can enter.

    Files prepared there move into ``folder`` with ``move_into``, which stays
    on one file system and so can rename them.
    """
    with tempfile.TemporaryDirectory(prefix=".pipeline-", dir=folder) as scratch:
        yield Path(scratch)


def move_into(source: Path, target: Path) -> bool:
    """Move the regular file ``source`` to ``target``; return False for anything else.

    ``os.replace`` replaces a file or link at ``target`` rather than
    following it. A ``source`` that is a link, a folder or missing is left
    where it is.
    """
    try:
        mode = os.lstat(source).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        return False
    remove(target)
    os.replace(source, target)
    return True
