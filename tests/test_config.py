"""RunConfig's new-or-resume rules in-process (fast): the options `archlab run` gives, a new run's
config, a resumed run's config, and the one-line messages (tests/test_cli*.py see them end to end)."""

import inspect
from pathlib import Path

import pytest

from archlab import cli
from archlab.config import RESUME_OPTIONS, RunConfig, run_options
from archlab.errors import UserError


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message, message
    error = excinfo.value  # not chained to a pydantic error: main() prints one line, and so would a traceback
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), "a chained error"
    return message


def test_resume_refuses_a_changed_fixed_option_in_one_line():
    stored = RunConfig(tier="micro", max_nodes=3)
    with pytest.raises(UserError) as e:
        stored.resumed({"max_nodes": 5, "seed": 5}, Path("runs/demo"))
    assert _one_line(e) == (
        "runs/demo was started with --seed 0; resume without changing it, or start a new run directory"
    )
    with pytest.raises(UserError, match=r"^runs/demo was started with --tier micro; resume without"):
        stored.resumed({"tier": "smoke"}, Path("runs/demo"))
    with pytest.raises(UserError, match=r"^runs/demo was started with --tier-set \{\}; resume"):
        stored.resumed({"tier_overrides": {"steps": 9}}, Path("runs/demo"))  # the flag's name, not the field's
    # the same value given again is no change
    assert stored.resumed({"tier": "micro", "seed": 0}, Path("runs/demo")) == stored


def test_resume_accepts_changed_budgets_and_keeps_the_rest():
    stored = RunConfig(tier="micro", max_nodes=3, seed=7, root="transformer", allow_quadratic=True)
    budgets = {
        "max_nodes": 40,
        "hours": 2.0,
        "max_cost": 1.5,
        "threads": 2,
        "workers": 2,
        "max_cpu_hours": 3.0,
        "max_gpu_hours": 1.0,
        "llm_timeout_s": 30.0,
        "keep_weights": 0,
        "mirror": [],
    }
    assert set(budgets) <= set(RESUME_OPTIONS)
    resumed = stored.resumed(budgets, Path("runs/demo"))
    assert {k: getattr(resumed, k) for k in budgets} == budgets
    assert resumed.model_dump(exclude=set(budgets)) == stored.model_dump(exclude=set(budgets))


def test_the_transformer_root_gets_allow_quadratic():
    assert RunConfig.for_new_run({"root": "transformer"}).allow_quadratic is True
    assert RunConfig.for_new_run({"root": "transformer", "allow_quadratic": False}).allow_quadratic is False
    assert RunConfig.for_new_run({"root": "deltanet"}).allow_quadratic is False
    assert RunConfig.for_new_run({}).allow_quadratic is False
    given = {"root": "transformer"}
    RunConfig.for_new_run(given)
    assert given == {"root": "transformer"}  # the caller's dict is left as it was


@pytest.mark.parametrize(
    "given, message",
    [
        ({"max_cpu_hours": 0}, "--cpu-hours: Input should be greater than 0"),
        ({"llm_timeout_s": 0}, "--llm-timeout: Input should be greater than 0"),
        ({"tier": "bogus"}, "--tier: Input should be 'micro', 'smoke', 'explore' or 'verify'"),
        ({"threads": 1000}, "--threads: Input should be less than or equal to 64"),
        ({"address": "x"}, "--address: only --executor ray joins a cluster"),
        (
            {"tier": "verify", "promote": 0.5, "promote_tier": "verify"},
            "--promote-tier: must be a higher tier than --tier verify for --promote 0.5",
        ),
        (  # the default promote tier is checked too: before, this run started and then could not resume
            {"tier": "verify", "promote": 0.5},
            "--promote-tier: must be a higher tier than --tier verify for --promote 0.5",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option(given, message):
    with pytest.raises(UserError) as e:
        RunConfig.for_new_run(given)
    assert _one_line(e) == message


def test_a_bad_value_on_resume_is_one_line_too():
    with pytest.raises(UserError) as e:
        RunConfig(tier="micro").resumed({"max_cpu_hours": 0}, Path("runs/demo"))
    assert _one_line(e) == "--cpu-hours: Input should be greater than 0"


def test_a_file_root_and_the_data_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("# a candidate\n")
    (tmp_path / "corpus.txt").write_text("text\n")
    (tmp_path / "notes").mkdir()
    given = run_options({"root": "mine.py", "data": Path("corpus.txt"), "knowledge": [Path("notes")]})
    assert given == {
        "root": str(tmp_path.resolve() / "mine.py"),
        "data": str(tmp_path.resolve() / "corpus.txt"),
        "knowledge": [str(tmp_path.resolve() / "notes")],
    }
    assert run_options({"root": "transformer"}) == {"root": "transformer"}  # a built-in name is no file here
    assert run_options({"root": "nothing_here.py"}) == {"root": "nothing_here.py"}  # root_source says it is wrong


def test_missing_paths_and_bad_overrides_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        run_options({"data": Path("nope.txt")})
    assert _one_line(e) == "--data nope.txt: no such file or folder"
    with pytest.raises(UserError) as e:
        run_options({"knowledge": [Path("nope")]})
    assert _one_line(e) == "--knowledge nope: no such file or folder"
    with pytest.raises(UserError) as e:
        run_options({"tier_set": ["foo"]})
    assert _one_line(e) == "--tier-set 'foo': write KEY=VALUE, e.g. --tier-set steps=800"
    with pytest.raises(UserError, match=r"^--promote-set: tier override steps: "):
        run_options({"promote_set": ["steps=x"]})
    # --promote-set is checked first, then --tier-set, then the paths (as the CLI always did)
    with pytest.raises(UserError, match=r"^--promote-set 'x'"):
        run_options({"promote_set": ["x"], "tier_set": ["y"], "data": Path("nope.txt")})


def test_options_map_to_fields_renamed_and_parsed():
    given = run_options(
        {
            "cpu_hours": 2.0,
            "gpu_hours": 1.0,
            "llm_timeout": 30.0,
            "llm_patience": 5.0,
            "tier": "micro",
            "tier_set": ["steps=5"],
            "seed": 0,
            "knowledge": [],  # a repeatable option not given
            "promote_set": None,
            "mirror": [],  # --mirror none: stop mirroring, which is a value
        }
    )
    assert given == {
        "max_cpu_hours": 2.0,
        "max_gpu_hours": 1.0,
        "llm_timeout_s": 30.0,
        "llm_patience_s": 5.0,
        "tier": "micro",
        "tier_overrides": {"steps": 5},
        "seed": 0,
        "mirror": [],
    }


def test_every_option_of_archlab_run_is_a_config_field():
    """`archlab run` passes its parameters by name: one without a RunConfig field (or a rename in
    OPTION_NAMES) is a mistake that run_options reports, not an option silently dropped."""
    names = [p for p in inspect.signature(cli.run).parameters if p not in ("run_dir", "trust_endpoint")]
    assert len(names) > 30
    assert run_options(dict.fromkeys(names)) == {}
    with pytest.raises(TypeError, match="no_such_option"):
        run_options({"no_such_option": 1})


def test_an_evaluation_request_carries_the_runs_rules(tmp_path):
    """Search, promotion and replay build their requests here: a replay of a --root transformer run
    used to drop allow_quadratic and so rejected the quadratic mixers the run had accepted."""
    config = RunConfig(root="transformer", allow_quadratic=True, implausible_gain=0.4, data=str(tmp_path))
    log = tmp_path / "logs" / "x.log"
    request = config.request("code", "explore", 3, log, None, param_limit=-1, reference={"val_loss": 4.0})
    assert (request.allow_quadratic, request.implausible_gain, request.data) == (True, 0.4, str(tmp_path))
    assert (request.tier, request.seed, request.log_path, request.reference) == ("explore", 3, log, {"val_loss": 4.0})
