"""`archlab export`: a node of a real micro-tier run (conftest.py's review_run) becomes a Hugging Face model directory that
transformers loads (trust_remote_code), scores like the sandbox's scorer did, and generates from."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import helpers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # an export that trains (600 s bound)


@pytest.fixture
def run(review_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    helpers.copy_run(review_run, copy)
    return copy


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """transformers' module cache in a tmp dir, and no network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_export_loads_with_transformers_matches_the_model_shell_and_generates(run, tmp_path, offline_hf):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archlab.sandbox import contract
    from archlab.sandbox.data import Corpus
    from archlab.sandbox.model import LM
    from archlab.sandbox.tiers import TIERS

    node = next(n for n in helpers.node_rows(run) if n["id"] != 0 and n["status"] == "done")
    out = tmp_path / "model"
    # Without the weights the run kept (as for a node not among its best): export trains the node once
    # (a replay at the run's tier and seed). tests/test_first_minutes.py exports kept weights.
    shutil.rmtree(run / "weights", ignore_errors=True)
    proc = helpers.cli("export", run, node["id"], out, "--threads", helpers.THREADS, "--json", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["trained_now"] and facts["tier"] == "micro" and facts["seed"] == 0
    assert facts["val_loss"] == pytest.approx(node["val_loss"], abs=1e-4), (
        "the retraining repeats the search evaluation"
    )
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_archlab.py",
        "configuration_archlab.py",
        "candidate.py",
        "tokenizer.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    code = helpers.code_at(run, node["commit_sha"])
    assert (out / "candidate.py").read_text() == code
    config = json.loads((out / "config.json").read_text())
    assert config["archlab"]["node"] == node["id"] and config["archlab"]["commit"] == node["commit_sha"]

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    text = "def main(argv):\n    return ö"
    assert tokenizer(text).input_ids == list(text.encode("utf-8")), "byte-level: token id = byte value"

    # The same numbers as archlab's own model shell with the trained weights ...
    assert Path(facts["weights"]).is_relative_to(run.resolve()) and facts["weights"].endswith(".safetensors")
    saved = load_file(facts["weights"])
    assert {k.split(".")[0] for k in saved} <= {"lm", "probe"} and "lm.embed.weight" in saved
    state = {k[3:]: v for k, v in saved.items() if k.startswith("lm.")}
    tier = TIERS["micro"]
    lm = LM(contract.load(code), tier)
    lm.load_state_dict(state, strict=True)
    lm.eval()
    tokens = torch.tensor([list(b"import torch\nclass Mixer(nn.Module):")])
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, lm(tokens), atol=1e-5)
        # ... and its validation loss over the scorer's validation windows is the recorded one.
        inputs, targets = (torch.from_numpy(a) for a in Corpus.load(None).val_windows(tier.val_windows, tier.seq_len))
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256).double(), targets.reshape(-1)).item()
    assert loss == pytest.approx(facts["val_loss"], abs=1e-4)

    # It generates: greedy continuation, byte tokens, the same as decoding by hand.
    prompt = tokenizer("for i in range(", return_tensors="pt").input_ids
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape == (1, prompt.shape[1] + 12)
    assert torch.equal(generated[0, : prompt.shape[1]], prompt[0])
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, ids)
    assert isinstance(tokenizer.decode(generated[0]), str)

    # A second export reuses the saved weights (no training) and refuses a non-empty directory.
    again = helpers.cli("export", run, node["id"], tmp_path / "again", "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    assert not json.loads(again.stdout)["trained_now"]
    line = helpers.assert_user_error(helpers.cli("export", run, node["id"], out, timeout=60))
    assert "not empty" in line
