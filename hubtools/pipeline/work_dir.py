"""The release's work folder: its own output, claimed with a marker, holding only the release's entries,
emptied of them (never of anything else) when the release ends or by the next run after a kill -9."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from hubtools.destination import discard
from hubtools.errors import DestinationError

WORK_MARKER = ".hubtools-release"


def check_work_dir(work: Path, names: tuple[str, ...]) -> None:
    """`claim_work_dir`'s refusals (DestinationError naming what is in the way), touching nothing: for dry runs."""
    if (blocked := next((p for p in (work, *work.parents) if p.exists() and not p.is_dir()), None)) is not None:
        raise DestinationError(f"{work}: expected a folder for the release's work files, found the file {blocked}")
    if work.exists() and not (work / WORK_MARKER).is_file():
        raise DestinationError(f"{work}: exists and was not made by hubtools release (choose another work folder)")
    if work.exists() and (foreign := [p for p in sorted(work.iterdir()) if p.name not in (*names, WORK_MARKER)]):
        raise DestinationError(
            f"{work}: expected only hubtools release's work files, found {foreign[0].name}, which is not "
            "hubtools' (nothing was deleted: move it or choose another work folder)"
        )


def claim_work_dir(work: Path, names: tuple[str, ...]) -> Path:
    """A work folder of our own whose top-level entries may only be `names` (and the marker): one left by a
    killed run is emptied of them, anything else in it is refused (`check_work_dir`); nothing else is deleted."""
    check_work_dir(work, names)
    if work.exists():
        release_work_dir(work, names)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("temporary files of `hubtools release`; deleted when it ends\n")
    return work


def release_work_dir(work: Path, names: tuple[str, ...]) -> None:
    """Delete our entries of a work folder, then the folder if nothing else is left in it."""
    for name in (*names, WORK_MARKER):
        discard(work / name)
    with suppress(OSError):
        work.rmdir()  # fails when something appeared there that is not ours: it stays
