"""The evaluation request (what every caller hands the sandbox), the parameter budget, seed
averaging and the wording of a candidate's exception: units, no sandbox."""

import json
import math
import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError

from archlab.sandbox import runner
from archlab.sandbox.averaging import SPREAD_KEYS, average, mean_std
from archlab.sandbox.errors import DETAIL_LIMIT, rejected
from archlab.sandbox.request import EvaluationRequest, param_budget
from archlab.sandbox.scorer import root_mixer_params
from archlab.sandbox.tiers import resolve


def _round_trip(request: EvaluationRequest) -> EvaluationRequest:
    """What a slot process or a Ray worker gets: JSON text, as the executors send it."""
    return EvaluationRequest.model_validate(json.loads(json.dumps(request.model_dump(mode="json"))))


def test_a_request_survives_its_json_round_trip():
    request = EvaluationRequest(
        source="class Mixer: ...\n",
        tier="explore",
        tier_overrides={"steps": 800, "probes": {"steps": 300, "pairs": [2, 4]}},
        seed=3,
        seeds=2,
        data="/data/text.txt",
        param_limit=25824,
        threads=2,
        timeout_s=120,
        allow_quadratic=True,
        reference={"val_loss": 4.1, "mixer_params": 21520, "quant_loss": math.inf},
        implausible_gain=0.5,
        device="cpu",
        skip_static_checks=True,
        log_path=Path("/run/logs/node-3-0.log"),
        weights_out=Path("/run/weights/node-3-0.safetensors"),
    )
    back = _round_trip(request)
    assert back == request
    assert isinstance(back.log_path, Path) and isinstance(back.weights_out, Path)
    assert back.timeout_s == 120 and isinstance(back.timeout_s, int), "an int limit stays one (the progress file)"
    assert back.reference["quant_loss"] == math.inf, "NaN and infinity travel as json.dumps wrote them"
    # a Tier object travels too, and the defaults are runner.evaluate's
    tier = resolve("micro", {"steps": 5})
    assert _round_trip(EvaluationRequest(source="x", tier=tier)).tier == tier
    bare = EvaluationRequest(source="x")
    assert (bare.tier, bare.seed, bare.param_ratio, bare.memory_gb, bare.implausible_gain) == (
        "smoke",
        0,
        1.2,
        12.0,
        0.25,
    )
    assert bare.placed(threads=4, device="cpu") == bare.model_copy(update={"threads": 4, "device": "cpu"})


def test_a_request_refuses_unknown_fields_and_extra_arguments():
    with pytest.raises(ValidationError):
        EvaluationRequest(source="x", tiers="micro")
    with pytest.raises(TypeError):
        runner.evaluate(EvaluationRequest(source="x"), "micro")
    # the keyword shorthand builds the same request: a bad tier is the same "config" rejection either way
    assert runner.evaluate("x", "huge").reason == runner.evaluate(EvaluationRequest(source="x", tier="huge")).reason
    assert runner.evaluate("x", "huge").reason == "config"


def test_the_parameter_budget_is_the_root_mixer_times_the_ratio_rounded_down():
    assert param_budget(21520, 1.2) == 25824
    assert param_budget(21520, 1.0) == 21520 and isinstance(param_budget(21520.0, 1.0), int)
    for params in (1, 999, 21520, 86080, 123457):
        for ratio in (0.5, 1.0, 1.2, 1.3, 2.75):
            assert param_budget(params, ratio) == int(params * ratio)
    # the scorer's own default: param_ratio x the root mixer at the tier's width
    assert param_budget(root_mixer_params(128, 4), 1.2) == math.floor(root_mixer_params(128, 4) * 1.2)


def test_seed_averaging_is_the_mean_with_the_spread_of_the_main_metrics():
    runs = [
        {"val_loss": 4.0, "tokens_per_s": 900.0, "params": 100, "tier": "micro", "wall_s": 2.0, "ok_flag": True},
        {"val_loss": 4.2, "tokens_per_s": 1100.0, "params": 100, "tier": "micro", "wall_s": 3.0, "flagged": "x"},
    ]
    out = average(runs)
    assert out["val_loss"] == pytest.approx(4.1) and out["val_loss_std"] == statistics.stdev([4.0, 4.2])
    assert out["tokens_per_s_std"] == statistics.stdev([900.0, 1100.0]) and "params_std" not in out
    assert out["params"] == 100.0 and out["tier"] == "micro" and out["ok_flag"] is True
    assert out["flagged"] == "x" and out["wall_s"] == 5.0
    assert list(out)[:2] == ["val_loss", "val_loss_std"], "each spread beside its mean"
    assert "val_loss_std" not in average(runs[:1]), "one seed has no spread"
    assert "quant_loss" in SPREAD_KEYS
    assert mean_std([]) == (None, None) and mean_std([2.0]) == (2.0, None)
    assert mean_std([1.0, 3.0]) == (2.0, statistics.stdev([1.0, 3.0]))
    # the sandbox's multi-seed result: the seeds first, then the same figures
    results = [runner.Result(ok=True, metrics=r) for r in runs]
    merged = runner._aggregate(results, [0, 1])
    assert merged.metrics == {"seeds": [0, 1], **out} and list(merged.metrics)[0] == "seeds"


def test_a_candidate_exception_is_worded_one_way():
    error = rejected(ValueError("bad shape"), "Mixer.forward")
    assert (error.reason, error.detail) == ("error", "Mixer.forward raised ValueError: bad shape")
    assert rejected(ValueError("x"), "FFN(d_model=8)", "contract").reason == "contract"
    assert rejected(KeyError("k")).detail == "KeyError: 'k'"
    memory = rejected(RuntimeError("CUDA out of memory. Tried to allocate"), "Mixer.forward")
    assert memory.reason == "memory" and memory.detail.startswith("Mixer.forward ran out of memory: CUDA")
    assert rejected(MemoryError()).detail == "ran out of memory"
    # step() has always blamed step() for any exception, an allocation's too
    assert rejected(MemoryError(), "Mixer.step", "step", memory=False).reason == "step"
    assert len(rejected(ValueError("y" * 10_000), "Mixer.forward").detail) == DETAIL_LIMIT
