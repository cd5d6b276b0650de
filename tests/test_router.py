"""The model router's rule (a pure function over arm statistics), its statistics read back from a
synthetic store (no training, no endpoint), and the comma-separated model options."""

import math
import random

import pytest

from archlab.agents.brains import role_models
from archlab.agents.llm import BudgetExceeded, LLMClient
from archlab.agents.router import Arm, Router, choose, gain, indexes
from archlab.config import RunConfig, model_list
from archlab.errors import UserError
from archlab.tree.store import Store


def test_every_arm_is_tried_once_first_ties_drawn_by_the_rng():
    arms = [Arm("a", chosen=3, pulls=3, gain=0.3, best_gain=0.2, cost=0.3, priced=3), Arm("b"), Arm("c")]
    assert indexes(arms)["b"] == math.inf == indexes(arms)["c"]
    picks = {choose(arms, random.Random(seed))[0] for seed in range(20)}
    assert picks == {"b", "c"}  # the untried ones, drawn by the rng
    assert choose(arms, random.Random(1)) == choose(arms, random.Random(1))  # seeded: reproducible


def test_gain_per_cost_ucb1():
    good = Arm("good", chosen=4, pulls=4, gain=0.4, best_gain=0.2, cost=0.04, priced=4)  # 0.01 USD a node
    bad = Arm("bad", chosen=2, pulls=2, gain=0.0, best_gain=0.0, cost=0.06, priced=2)  # 0.03 USD a node
    pricey = Arm("pricey", chosen=1, pulls=1, gain=0.2, best_gain=0.2, cost=0.1, priced=1)  # 0.1 USD a node
    scores = indexes([good, bad, pricey])
    total = 4 + 2 + 1
    assert scores["good"] == pytest.approx(0.4 / 4 / 0.2 + math.sqrt(2 * math.log(total) / 4))
    assert scores["bad"] == pytest.approx(math.sqrt(2 * math.log(total) / 2) / 3)
    assert scores["pricey"] == pytest.approx((1 + math.sqrt(2 * math.log(total))) / 10)
    assert choose([good, bad, pricey], random.Random(0))[0] == "good"
    # at equal cost the exploration bonus wins an arm pulled far less often its turn
    rare = Arm("rare", chosen=1, pulls=1, gain=0.0, cost=0.01, priced=1)
    assert choose([good, rare], random.Random(0))[0] == "rare"


def test_no_gain_yet_means_cost_decides_and_free_beats_priced():
    cheap = Arm("cheap", chosen=1, pulls=1, cost=0.01, priced=1)
    dear = Arm("dear", chosen=1, pulls=1, cost=0.05, priced=1)
    assert indexes([cheap, dear])["dear"] == pytest.approx(indexes([cheap, dear])["cheap"] / 5)
    free = Arm("free", chosen=1, pulls=1, cost=0.0, priced=1)
    scores = indexes([free, dear])
    assert scores["dear"] == 0.0 and scores["free"] > 0
    # an arm chosen but still in flight counts one pull of gain 0; one not yet priced counts as the cheapest
    waiting = Arm("waiting", chosen=1)
    assert indexes([waiting, dear])["waiting"] == pytest.approx(math.sqrt(2 * math.log(2)))
    # equal arms tie: the rng draws
    twins = [Arm("x", chosen=1, pulls=1, cost=0.01, priced=1), Arm("y", chosen=1, pulls=1, cost=0.01, priced=1)]
    assert {choose(twins, random.Random(s))[0] for s in range(20)} == {"x", "y"}


def test_gain_is_over_the_parent_and_never_negative():
    assert gain({"status": "done", "fitness": 0.3, "parent_fitness": 0.1}) == pytest.approx(0.2)
    assert gain({"status": "done", "fitness": 0.0, "parent_fitness": 0.1}) == 0.0
    assert gain({"status": "failed", "fitness": None, "parent_fitness": 0.1}) == 0.0


def _routed_store(tmp_path) -> Store:
    """Root 0; node 1 (model a) gained 0.2 for 0.02 USD in two calls; node 2 (model b) failed after
    a call of 0.05 USD; node 3 (model a) is still evaluating."""
    store = Store(tmp_path, create=True)
    store.add_node(id=0, parent_id=None, status="done", fitness=0.0)
    store.add_node(id=1, parent_id=0, status="done", fitness=0.2)
    store.add_node(id=2, parent_id=0, status="failed", reason="malformed")
    store.add_node(id=3, parent_id=1, status="evaluating")
    for node_id, model in ((1, "a"), (2, "b"), (3, "a")):
        store.add_trace(node_id, "router", "choice", model=model, decision={"role": "researcher", "model": model})
    store.add_trace(1, "researcher", "llm", model="a", cost=0.01, tokens_out=40, request_hash="1")
    store.add_trace(1, "researcher", "llm", model="a", cost=0.01, tokens_out=70, request_hash="2")
    store.add_trace(1, "researcher", "llm", model="a", error="timeout", request_hash="3")
    store.add_trace(2, "researcher", "llm", model="b", cost=0.05, tokens_out=10, request_hash="4")
    store.add_trace(2, "analyst", "llm", model="scripted", cost=1.0, tokens_out=900, request_hash="5")
    return store


def test_the_statistics_come_from_the_store_and_survive_a_restart(tmp_path):
    store = _routed_store(tmp_path)
    assert store.router_choice(1, "researcher") == "a" and store.router_choice(4, "researcher") is None
    assert store.longest_answer("researcher") == 70
    router = Router(store, {"researcher": ["a", "b", "c"], "analyst": ["scripted"]}, seed=0)
    assert router.routes("researcher") and not router.routes("analyst")
    a, b, c = router.arms("researcher")
    assert (a.chosen, a.pulls, a.gain, a.cost, a.priced) == (2, 1, pytest.approx(0.2), pytest.approx(0.02), 1)
    assert (b.chosen, b.pulls, b.gain, b.mean_cost) == (1, 1, 0.0, pytest.approx(0.05))
    assert c.chosen == 0
    assert router.choose("researcher", 4, ["a", "b", "c"]) == "c"  # never tried yet
    # the recorded nodes got their rewards, once, however often the router settles
    router.settle()
    router.settle()
    rewards = {t["node_id"]: t["decision"] for t in store.traces_of("router", "reward")}
    assert set(rewards) == {1, 2}
    assert rewards[1] == {
        "role": "researcher",
        "model": "a",
        "gain": pytest.approx(0.2),
        "cost": pytest.approx(0.02),
        "reward": pytest.approx(10.0),
    }
    assert rewards[2]["gain"] == 0.0 and rewards[2]["reward"] == 0.0
    choice = store.traces_of("router", "choice")[-1]
    assert choice["node_id"] == 4 and choice["model"] == "c"
    assert [x["index"] for x in choice["decision"]["arms"]][2] == "untried"
    # a new router on the same store (a resumed run) knows the same, and keeps node 4's choice
    store.close()
    again = Router(Store(tmp_path), {"researcher": ["a", "b", "c"]}, seed=0)
    assert again.chosen("researcher", 4) == "c"
    assert [x.chosen for x in again.arms("researcher")] == [2, 1, 0]  # node 4 has no row yet
    again.store.add_node(id=4, parent_id=1, status="evaluating")  # its first commit
    assert [x.chosen for x in again.arms("researcher")] == [2, 1, 1]


def test_routing_never_picks_a_model_whose_call_would_pass_max_cost(tmp_path):
    store = _routed_store(tmp_path)  # 1.07 USD spent so far
    router = Router(store, {"researcher": ["a", "b"]}, seed=0)
    prices = {"a": [1.0, 1.0], "b": [1000.0, 1000.0]}

    def client(max_cost):
        return LLMClient(
            store, base_url="http://127.0.0.1:9/v1", api_key_env="X", models={"researcher": "a"}, prices=prices,
            max_cost=max_cost, router=router,
        )  # fmt: skip

    messages = [{"role": "user", "content": "x" * 4000}]  # 1000 tokens in, and 70 out (the longest answer)
    assert client(2.5)._affordable("researcher", messages) == ["a", "b"]
    assert client(1.2)._affordable("researcher", messages) == ["a"]  # b: ~1.07 USD more
    with pytest.raises(BudgetExceeded, match="no researcher model's next call fits"):
        client(1.0705)._affordable("researcher", messages)
    with pytest.raises(BudgetExceeded, match="reached --max-cost"):  # before any request is sent
        client(1.0705).chat("researcher", 5, 0, messages)
    assert store.router_choice(5, "researcher") is None


def test_model_options_are_one_or_several_names():
    assert model_list("gpt-5") == ["gpt-5"]
    assert model_list(" a, b ,a,c") == ["a", "b", "c"]
    with pytest.raises(ValueError):
        model_list("a,,b")
    config = RunConfig(llm="openai:m", researcher_model="a,b", analyst_model="x")
    assert config.researcher_model == "a,b"  # the config keeps the string
    assert role_models(config, "m") == {
        "researcher": ["a", "b"],
        "engineer": ["m"],
        "analyst": ["x"],
        "judge": ["x"],
    }
    with pytest.raises(UserError, match="--engineer-model: .*separated by commas"):
        RunConfig.for_new_run({"llm": "openai:m", "engineer_model": "a,"})
