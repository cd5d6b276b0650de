"""One table says which way each metric improves (commands/status.py METRIC_DIRECTIONS): the HTML
report colours changes by it, and the web UI reads it from /api/run instead of keeping its own."""

import re
from pathlib import Path

from archlab.commands.status import METRIC_DIRECTIONS, metric_direction
from archlab.config import RunConfig
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store
from archlab.web import report

STATIC = Path(report.__file__).parent / "static"


def test_the_table_decides_each_metric():
    lower = ("val_loss", "val_bpb", "train_loss", "wall_s", "peak_mem_mb", "state_bytes_per_token", "quant_loss")
    lower += ("decode_ms_per_token",)  # latency per token: the smoke tier measures it
    assert all(metric_direction(k) == "lower" for k in lower)
    assert all(metric_direction(k) == "higher" for k in ("tokens_per_s", "recall_acc", "Copy_Recall"))
    assert all(metric_direction(k) is None for k in ("params", "mixer_params", "train_tokens", "seeds"))


def test_the_report_colours_by_the_table():
    assert report._change("val_loss", 3.0, 4.0) == ("-25.0%", "good")
    assert report._change("tokens_per_s", 3.0, 4.0) == ("-25.0%", "bad")
    assert report._change("wall_s", 5.0, 4.0)[1] == "bad"  # as the web UI has always coloured it
    assert report._change("mixer_params", 5.0, 4.0) == ("+25.0%", "")


def test_the_web_ui_is_served_the_table_and_keeps_no_rule_of_its_own(tmp_path):
    from starlette.testclient import TestClient

    from archlab.web.app import create_app

    run = tmp_path / "run"
    run.mkdir()
    RunConfig(tier="micro").save(run)
    Lineage(run / "repo", create=True).repo.close()
    store = Store(run, create=True)
    store.add_node(id=0, parent_id=None, status="done", fitness=0.0, metrics={"val_loss": 4.0, "tokens_per_s": 9.0})
    store.close()
    with TestClient(create_app(run), base_url="http://127.0.0.1") as client:
        served = client.get("/api/run").json()["metric_directions"]
    assert served == {k: list(v) for k, v in METRIC_DIRECTIONS.items()}
    scripts = {p.name: p.read_text(encoding="utf-8") for p in STATIC.glob("*.js")}
    assert "metric_directions" in scripts["dom.js"]
    for name, source in scripts.items():
        for fragments in METRIC_DIRECTIONS.values():
            assert not re.search("|".join(map(re.escape, fragments)), _regex_literals(source)), name


def _regex_literals(source: str) -> str:
    """The JavaScript regular-expression literals in a script (/.../flags after `=` or `(`)."""
    return "\n".join(re.findall(r"[=(,]\s*/((?:[^/\\\n]|\\.)+)/[a-z]*", source))
