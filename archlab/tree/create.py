"""A new run directory: its database, its git lineage and its frozen config."""

from pathlib import Path

from archlab.config import RunConfig
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store


def create_run(run_dir: Path, config: RunConfig) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    Store(run_dir, create=True).close()
    Lineage(run_dir / "repo", create=True)
    config.save(run_dir)
