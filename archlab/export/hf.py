"""`archlab export RUN NODE OUT_DIR`: a node as a Hugging Face transformers model directory.

OUT_DIR gets the candidate's code unchanged (candidate.py), the harness's model shell around
it (modeling_archlab.py, configuration_archlab.py), config.json with an auto_map (so
`AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)` loads it), the
weights of the node's latest training (model.safetensors), a byte-level tokenizer
(token id = byte value) and a README. The candidate's code is never run here: the weights are
copied as tensors and the layer pattern is read from the source without executing it.

Weights come from the newest evaluation of the node that saved them (replays save them);
when there is none, the node is trained once more (a replay at the run's tier and seed,
which repeats its search evaluation) and that training is exported.
"""

import ast
import json
import time
from pathlib import Path
from typing import Callable

import jinja2

from archlab import syntax
from archlab.commands.fork import trained_node
from archlab.commands.replay import Replayer, tier_overrides
from archlab.errors import UserError
from archlab.sandbox.data import VOCAB_SIZE
from archlab.sandbox.errors import CandidateError
from archlab.sandbox.static import static_check
from archlab.sandbox.tiers import TIERS, TierError, resolve
from archlab.text import duration, markdown
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store

TEMPLATES = Path(__file__).parent / "template"
MODEL_FILE = "model.safetensors"


class TrainingFailed(UserError):
    exit_code = 1  # not a usage error: the node could not be trained here


def latest_weights(store: Store, run_dir: Path, node_id: int, tier: str | None = None) -> dict | None:
    """The newest evaluation of the node whose weights file is still there."""
    for e in reversed(store.evaluations(node_id)):
        path = (e.get("env") or {}).get("weights")
        if e["ok"] and path and (tier is None or e["tier"] == tier):
            full = (Path(run_dir) / path).resolve()
            if full.is_relative_to(Path(run_dir).resolve()) and full.is_file():
                return e | {"weights_path": full}
    return None


def candidate_layout(code: str) -> tuple[str, bool]:
    """The candidate's LAYERS pattern and whether it defines FFN, read from its syntax tree."""
    tree = syntax.parse(code)
    layers, has_ffn = "M", False
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "FFN":
            has_ffn = True
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if isinstance(target, ast.Name) and target.id == "FFN":
                has_ffn = True
            if isinstance(target, ast.Name) and target.id == "LAYERS":
                value = node.value
                if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    raise UserError(
                        "the candidate computes LAYERS instead of writing it as a string; export needs a literal pattern"
                    )
                layers = value.value
    return layers, has_ffn


def export(
    run_dir: Path,
    node_id: int,
    out_dir: Path,
    *,
    tier: str | None = None,
    seed: int | None = None,
    threads: int | None = None,
    force: bool = False,
    on_status: Callable[[str], None] = lambda message: None,
) -> dict:
    try:
        import torch
        from safetensors.torch import load_file, save_file
    except ImportError as e:
        raise UserError(
            f"export needs transformers and safetensors ({e.name} is missing): pip install 'archlab[export]'"
        ) from None
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config, store, node = trained_node(run_dir, node_id, "be exported")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not force)):
        raise UserError(f"OUT_DIR {out_dir.name}/ exists and is not empty (--force writes into it)")
    if tier is not None and tier not in TIERS:
        raise UserError(f"--tier {tier!r}: choose one of {', '.join(t for t in TIERS if TIERS[t].steps)}")
    code = Lineage(run_dir / "repo").code(node["commit_sha"])
    layers, has_ffn = candidate_layout(code)

    found = latest_weights(store, run_dir, node_id, tier)
    trained = False
    if found is None:
        replayer = Replayer(run_dir, tier, threads)
        train_seed = config.seed if seed is None else seed
        took = (node.get("metrics") or {}).get("wall_s") if replayer.tier == config.tier else None
        on_status(
            f"no saved weights for node {node_id}{f' at the {tier} tier' if tier else ''}: training it "
            f"(a replay at the {replayer.tier} tier, seed {train_seed}"
            + (f"; its search evaluation took {duration(took)})" if took else ")")
        )
        if replayer.tier == config.tier:
            row = replayer.evaluate(node_id, train_seed, replayer.param_limit(node_id, []))
        else:
            row = replayer.replay([node_id], [train_seed])[-1].runs[0]
        if not row["ok"]:  # one line: the cause's first line and where the whole log is
            first = next(iter((row["detail"] or "").strip().splitlines()), "")[:300]
            where = f"; the whole log: {run_dir / row['log']}" if row.get("log") else ""
            raise TrainingFailed(
                f"training node {node_id} failed ({row['reason']}{': ' + first if first else ''}){where}"
            )
        found = latest_weights(store, run_dir, node_id, tier or replayer.tier)
        if found is None:
            raise UserError("the sandbox did not save the trained weights (this archlab's harness cannot export)")
        trained = True

    try:
        saved = load_file(str(found["weights_path"]))
    except Exception as e:  # safetensors raises its own types for a damaged file
        raise UserError(f"{found['weights_path']}: not a safetensors file ({type(e).__name__}: {e})") from None
    state = {k[3:]: v for k, v in saved.items() if k.startswith("lm.")}
    if "embed.weight" not in state or tuple(state["embed.weight"].shape)[0] != VOCAB_SIZE:
        raise UserError(f"{found['weights_path']}: not the weights of an archlab language model")
    d_model = state["embed.weight"].shape[1]
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    try:
        tier_spec = resolve(found["tier"], tier_overrides(config, found["tier"]))
    except (TierError, KeyError):
        tier_spec = TIERS[config.tier]
    pattern = (layers * n_layers)[:n_layers]
    provenance = {
        # the run's name only: no local path leaves the machine
        "run": run_dir.resolve().name,
        "node": node_id,
        "commit": node["commit_sha"],
        "operator": node["operator"],
        "motivation": node["motivation"],
        "design": node.get("design"),
        "tier": found["tier"],
        "seed": found["seed"],
        "evaluation": found["id"],
        "evaluation_kind": found["kind"],
        "metrics": found["metrics"],
        "search_metrics": node["metrics"],
        "fitness": node["fitness"],
        "exported": time.time(),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    values = {"node": node_id, "run_name": run_dir.resolve().name, "commit": node["commit_sha"], "has_ffn": has_ffn}
    try:  # loading the export runs this code: it must pass today's static checks, whatever the run allowed
        static_check(code)
    except CandidateError as e:
        raise UserError(
            f"node {node_id}'s code does not pass the static checks ({e.reason}: {e.detail}); not exported"
        ) from None
    (out_dir / "candidate.py").write_text(code, encoding="utf-8")
    (out_dir / "modeling_archlab.py").write_text(
        env.get_template("modeling_archlab.py.j2").render(**values), encoding="utf-8"
    )
    (out_dir / "configuration_archlab.py").write_text(
        env.get_template("configuration_archlab.py.j2").render(**values), encoding="utf-8"
    )
    hf_config = {
        "architectures": ["ArchlabForCausalLM"],
        "model_type": "archlab",
        "auto_map": {
            "AutoConfig": "configuration_archlab.ArchlabConfig",
            "AutoModelForCausalLM": "modeling_archlab.ArchlabForCausalLM",
        },
        "vocab_size": VOCAB_SIZE,
        "d_model": d_model,
        "n_heads": tier_spec.n_heads,
        "n_layers": n_layers,
        "layers": pattern,
        "max_position_embeddings": 4 * tier_spec.seq_len,
        "tie_word_embeddings": False,
        "use_cache": False,
        "dtype": "float32",
        "archlab": provenance,
    }
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, default=str) + "\n")
    (out_dir / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "max_new_tokens": 64, "use_cache": False, "pad_token_id": 0}, indent=2) + "\n"
    )
    save_file(
        {
            k: v.detach().to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in state.items()
        },
        str(out_dir / MODEL_FILE),
        metadata={"format": "pt"},
    )
    write_tokenizer(out_dir, 4 * tier_spec.seq_len)
    (out_dir / "README.md").write_text(model_card(provenance, pattern, d_model, n_layers, tier_spec.n_heads, has_ffn))
    return {
        "out_dir": str(out_dir),
        "node": node_id,
        "weights": str(found["weights_path"]),
        "trained_now": trained,
        "tier": found["tier"],
        "seed": found["seed"],
        "val_loss": found["metrics"].get("val_loss"),
        "layers": pattern,
        "d_model": d_model,
        "n_layers": n_layers,
        "files": sorted(p.name for p in out_dir.iterdir()),
    }


def byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, so byte b is token b in a byte-level BPE with no merges."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {chars[b]: b for b in range(256)}


def write_tokenizer(out_dir: Path, max_length: int) -> None:
    """tokenizer.json (a byte-level BPE without merges: ids are byte values) and its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=byte_vocab(), merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": max_length,
                "clean_up_tokenization_spaces": False,
                "add_bos_token": False,
                "add_eos_token": False,
            },
            indent=2,
        )
        + "\n"
    )


def model_card(p: dict, pattern: str, d_model: int, n_layers: int, n_heads: int, has_ffn: bool) -> str:
    metrics = p["metrics"] or {}
    return f"""# archlab node {p["node"]}

A small byte-level language model whose sequence mixer was discovered by
[archlab](https://pypi.org/project/archlab/) in run `{markdown(p["run"])}` (node {p["node"]},
operator `{markdown(p["operator"])}`, commit `{p["commit"]}`).

> {markdown(" ".join((p["motivation"] or "").split()))}

**Loading this model runs its code** (`candidate.py`, written by an automated search, and the
shell around it: `trust_remote_code=True`). Read `candidate.py` before you load it, or load it
in a sandbox.

| | |
|---|---|
| layers | {n_layers} (`{pattern}`: M = the candidate's mixer, A = softmax attention) |
| width | d_model {d_model}, {n_heads} heads |
| FFN | {"the candidate's own" if has_ffn else "SwiGLU (archlab's harness)"} |
| trained | archlab tier `{p["tier"]}`, seed {p["seed"]} (evaluation {p["evaluation"]}, {p["evaluation_kind"]}) |
| validation loss | {metrics.get("val_loss", float("nan")):.4f} nats/byte ({metrics.get("val_bpb", float("nan")):.4f} bits/byte) |
| fitness in its run | {p["fitness"]:+.4f} (relative to the run's root) |

These models are tiny and briefly trained: they are for studying an architecture, not for
producing good text.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder", trust_remote_code=True)  # bytes: id = byte value
ids = tokenizer("def main(", return_tensors="pt").input_ids  # or torch.tensor([list("def main(".encode())])
out = model.generate(ids, max_new_tokens=40, do_sample=False)
print(tokenizer.decode(out[0]))                             # or bytes(out[0].tolist()).decode("utf-8", "replace")
```

## Files

- `candidate.py`: the candidate's code, exactly as archlab committed it
- `modeling_archlab.py`, `configuration_archlab.py`: archlab's model shell around it
- `model.safetensors`: the trained weights; `config.json`: the shape and where it came from (`archlab` key)
- `tokenizer.json`: byte-level, 256 tokens, no special tokens; inputs are not padded
"""
