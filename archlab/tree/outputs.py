"""Where a command may write a file it makes from a run (a report, a dataset): never over the run.

A file named inside the run directory is refused when it lands in one of the run's folders, or
replaces an existing file that is not of the kind the command writes: `archlab dataset RUN
RUN/archlab.db --force` once replaced the run's database with JSON lines (red team, 2026-12-05).
"""

from pathlib import Path

from archlab.errors import UserError

RUN_FOLDERS = ("repo", "logs", "weights")


def check_out(run_dir: Path, out: Path, flag: str, suffixes: tuple[str, ...], example: str) -> None:
    """One line and exit 2 when writing `out` could damage the run in `run_dir`; `suffixes`: the
    kinds of file the command writes (an existing one may be replaced), `example`: a good name."""
    if out.is_dir():
        raise UserError(f"{flag}{out}: is a directory; name a file, e.g. {out / example}")
    run, target = Path(run_dir).resolve(), out.resolve()
    if not target.is_relative_to(run) or target == run:
        return
    inside = target.relative_to(run).parts
    if inside[0] in RUN_FOLDERS or (target.exists() and target.suffix.lower() not in suffixes):
        raise UserError(
            f"{flag}{out}: refusing to write over the run's own files; write it outside {run_dir} "
            f"or as {Path(run_dir) / example}"
        )
