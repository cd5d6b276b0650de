"""The embedded no-LLM brain: three roles that need no API key.

The researcher mutates a parent's Design with typed operators, choosing the change with a UCB
bandit over what each value an operator sets has done in this tree so far (every operator once
first, in the order the knowledge base recommends for the parent's weaknesses, then every value
once; those that only change the speed last), and half of the time, when some change raised
fitness elsewhere in the tree on average and the parent lacks it, it transplants that change
instead (so improvements found in different branches get combined). Unguided (the baseline
strategies `evolution` and `random`) it draws the operator uniformly, as regularized evolution
does. The engineer renders the design to code and repairs the failures it understands; the
analyst compares the result with the parent, the siblings and the root. Every choice is
returned as a trace.

A parent without a design (a user's own root, an LLM's file, a node made by a code edit) gets the
code operators of code_edits.py instead, chosen the same way: untried operators first, then by
UCB over the fitness gains of their children, and half of the time the edit that paid most
elsewhere in the tree, made again on this parent. A template parent gets them too, now and then
(CODE_SHARE), and more often once they have paid more than the template operators in this tree.
"""

import json
import math
import random
import statistics
from dataclasses import dataclass

from archlab.agents import code_edits
from archlab.agents.code_edits import Edit
from archlab.agents.schema import Context, Proposal, Trace
from archlab.knowledge import KnowledgeIndex
from archlab.knowledge.lessons import Lesson, code_hash, priors
from archlab.sandbox.mechanisms import mechanisms, named
from archlab.templates import Design, render


@dataclass(frozen=True)
class Operator:
    name: str
    field: str
    values: tuple
    says: dict  # value -> what the change does, in words
    delta_only: bool = False
    speed_only: bool = False  # computes the same function (only how fast): tried after those that change it

    def applies(self, design: Design) -> bool:
        if self.delta_only and design.core != "delta":
            return False
        return self.name != "conv_size" or design.short_conv

    def variants(self, design: Design) -> list[Design]:
        current = getattr(design, self.field)
        return [design.model_copy(update={self.field: v}) for v in self.values if v != current]


OPERATORS = [
    Operator(
        "short_conv",
        "short_conv",
        (True, False),
        {
            True: "add a short causal depthwise convolution on q/k/v, giving the mixer cheap local context",
            False: "remove the short convolution, testing whether local mixing earns its cost",
        },
    ),
    Operator(
        "conv_size",
        "conv_size",
        (2, 3, 4, 6, 8),
        {v: f"set the short convolution's kernel to {v} tokens" for v in (2, 3, 4, 6, 8)},
    ),
    Operator(
        "feature_map",
        "feature_map",
        ("silu", "elu1", "relu", "identity"),
        {
            "silu": "use SiLU as the q/k feature map",
            "elu1": "use elu(x)+1 (positive features) as the q/k feature map",
            "relu": "use ReLU (sparse positive features) as the q/k feature map",
            "identity": "drop the q/k feature map",
        },
        delta_only=True,
    ),
    Operator(
        "qk_norm",
        "qk_norm",
        (True, False),
        {
            True: "L2-normalise q and k per head, bounding the delta rule's update",
            False: "scale q/k instead of L2-normalising them",
        },
        delta_only=True,
    ),
    Operator(
        "beta",
        "beta",
        ("sigmoid", "sigmoid2", "const"),
        {
            "sigmoid": "learn a per-token write strength beta in (0, 1)",
            "sigmoid2": "let beta range over (0, 2) so the state transition can have negative eigenvalues",
            "const": "fix beta to 1 (always fully overwrite the addressed memory)",
        },
        delta_only=True,
    ),
    Operator(
        "forget_gate",
        "forget_gate",
        ("none", "data", "fixed"),
        {
            "none": "remove the forget gate",
            "data": "add a data-dependent scalar forget gate per head (gated delta rule)",
            "fixed": "add fixed per-head decays from fast to slow (retention-style)",
        },
        delta_only=True,
    ),
    Operator(
        "output_norm",
        "output_norm",
        (True, False),
        {True: "add a per-head RMSNorm on the mixer output", False: "remove the per-head output norm"},
    ),
    Operator(
        "output_gate",
        "output_gate",
        ("none", "silu", "sigmoid"),
        {
            "none": "remove the output gate",
            "silu": "gate the output with SiLU of a projection of the input",
            "sigmoid": "gate the output with a sigmoid of a projection of the input",
        },
    ),
    Operator(
        "heads",
        "heads",
        (0.5, 1, 2),
        {
            0.5: "halve the number of heads (larger state per head)",
            1: "use the harness's number of heads",
            2: "double the number of heads (smaller, more diverse states)",
        },
    ),
    Operator(
        "chunk_size",
        "chunk_size",
        (16, 32, 64, 128),
        {v: f"process the delta rule in chunks of {v} tokens" for v in (16, 32, 64, 128)},
        delta_only=True,
        speed_only=True,
    ),
    Operator(
        "hybrid",
        "layers",
        ("", "MA", "AM"),
        {
            "": "use this mixer in every layer",
            "MA": "make every second layer softmax attention (a hybrid layout)",
            "AM": "put softmax attention first and this mixer after it",
        },
    ),
]
BY_NAME = {op.name: op for op in OPERATORS}
FAILED_GAIN = -0.2  # what a failed child counts as in the operator bandit
KNOWLEDGE_BONUS = 0.02  # UCB bonus for operators that entries retrieved for the parent recommend
TRANSPLANT_SHARE = 0.5  # how often the guided researcher reuses a change that worked elsewhere, when there is one
# Seed noise in fitness: 0.005-0.015 at smoke (seed to seed, measured on DeltaNet and its ablations). A change is reused elsewhere only when it beat
# its parent by more on average: in one run's traces, transplants of gains >= 0.07 paid off in 5 of 7,
# those of <= 0.022 in 1 of 4. A speed-only operator competes with the others only once it has.
NOISE_FLOOR = 0.02
CODE = "code:"  # the operator names of code edits: code:gate, code:constant, ...
# How often a template parent gets a code edit: a share that lets the bandit learn whether code edits
# pay from a template root, without costing the template operators' proven efficiency; once both
# kinds have MIN_TRIES results, code edits get the larger share if they paid more on average.
CODE_SHARE, CODE_SHARE_PAYING, MIN_TRIES = 0.15, 0.5, 3
# Lessons of earlier runs from the same root (archlab/knowledge/lessons.py) start the statistics as
# priors: each earlier trial counts PRIOR_WEIGHT of one of this run's, and that weight halves once
# this run has made the change PRIOR_HALF_LIFE times, so the run's own evidence soon decides. Until
# this run has tried an arm, one that helped before (mean over NOISE_FLOOR) comes before everything
# else and one that hurt after everything else.
PRIOR_WEIGHT, PRIOR_HALF_LIFE = 0.5, 2


class OfflineBrain:
    kind = "offline"

    def __init__(self, knowledge: KnowledgeIndex, guided: bool = True, lessons: list[Lesson] = ()):
        self.knowledge = knowledge
        self.guided = guided
        self.lessons = list(lessons)  # earlier runs' (the baselines ignore them, as published)
        self._priors: dict[str, dict] = {}  # root hash -> priors(lessons, root hash)

    def _priors_for(self, ctx: Context) -> dict[tuple[str, str], dict]:
        """What lessons about this run's root say per (operator, arm)."""
        if not self.guided or not self.lessons:
            return {}
        root = code_hash(ctx.code(ctx.root["id"]))
        if root not in self._priors:
            self._priors[root] = priors(self.lessons, root)
        return self._priors[root]

    # -- researcher ---------------------------------------------------------------------------
    def research(self, ctx: Context) -> tuple[Proposal | None, list[Trace]]:
        query, hits, recommended = self._retrieve(ctx)
        lessons = self._priors_for(ctx)
        share = self._code_share(ctx.history, lessons)
        design = ctx.parent.get("design") and (
            share == 0 or ctx.rng.random() >= share
        )  # (no draw for the baselines: as published)
        best = (
            _lesson_kind(ctx, lessons, Design.model_validate(ctx.parent["design"]))
            if design is not None and ctx.explore is None
            else None
        )
        if best is not None:  # the change that helped most before, and is new to this run, decides the kind
            design = not best
        if design:
            proposal, traces = self._research_design(ctx, query, hits, recommended)
            if proposal is not None:
                return proposal, traces
        proposal, traces = self._research_code(ctx, query, hits, recommended)
        if proposal is None and ctx.parent.get("design"):  # every code edit of this parent is in the tree
            return self._research_design(ctx, query, hits, recommended)
        return proposal, traces

    def research_code(self, ctx: Context) -> tuple[Proposal | None, list[Trace]]:
        """A code edit of the parent, whatever it is (an LLM run's share of local refinements)."""
        return self._research_code(ctx, *self._retrieve(ctx))

    def _retrieve(self, ctx: Context) -> tuple[str, list, set]:
        """What the knowledge base and past analyses say about this parent's weaknesses, and the
        operators the entries found recommend."""
        query = ctx.knowledge_query()
        hits = self.knowledge.search(query, k=5)
        return query, hits, {op for h in hits if h.kind == "entry" for op in self.knowledge.entry(h.id).operators}

    def _code_share(self, history: list[dict], lessons: dict) -> float:
        """How often a template parent gets a code edit instead of a template operator: the larger
        share once code edits have paid more on average, here and in the lessons (as priors)."""
        if not self.guided:
            return 0.0  # the baselines keep their template search as published (bench figures)
        pooled = {}  # code edits or not -> (trials, mean gain)
        for is_code in (True, False):
            kind = (lambda name: name.startswith(CODE)) if is_code else (lambda name: name in BY_NAME)
            own = [_gain(r) for r in history if kind(r["operator"] or "")]
            prior = [(p["mean_gain"], p["trials"]) for (name, _), p in lessons.items() if kind(name)]
            n = len(own) + PRIOR_WEIGHT * sum(t for _, t in prior)
            pooled[is_code] = n, (sum(own) + PRIOR_WEIGHT * sum(m * t for m, t in prior)) / n if n else 0.0
        if pooled[True][0] >= MIN_TRIES and pooled[False][0] >= MIN_TRIES and pooled[True][1] > pooled[False][1]:
            return CODE_SHARE_PAYING
        return CODE_SHARE

    def _research_design(
        self, ctx: Context, query: str, hits: list, recommended: set
    ) -> tuple[Proposal | None, list[Trace]]:
        parent = Design.model_validate(ctx.parent["design"])
        stats, arms = _bandit_stats(ctx.history)
        lessons = self._priors_for(ctx)
        total = sum(len(v) for v in stats.values()) + PRIOR_WEIGHT * sum(p["trials"] for p in lessons.values())
        applicable = [op for op in OPERATORS if op.applies(parent)]
        fresh = {op.name: [d for d in op.variants(parent) if not ctx.seen(d.model_dump())] for op in applicable}
        learned = {name for name, _ in lessons}  # (operator, arm) keys: their operators count as tried

        def prior(op: Operator, design: Design) -> tuple[float, float] | None:
            key = (op.name, json.dumps(getattr(design, op.field)))
            return _prior(lessons.get(key), arms.get(key) or [])

        def arm(op: Operator, design: Design) -> tuple:
            # Credit goes to the value an operator sets, not just the operator: removing the output norm
            # helped, putting it back on a child that lacks it hurt, and an operator-level mean kept
            # proposing the latter (4 of 40 evaluations in one micro run). Every value is tried once
            # before any is retried (halving and doubling the heads are opposite bets: neither's record
            # says much about the other), those of operators that did well first.
            gains = arms.get((op.name, json.dumps(getattr(design, op.field)))) or []
            learnt = prior(op, design)
            lead = _lead(learnt, gains)
            if gains or learnt:
                bonus = KNOWLEDGE_BONUS * (op.name in recommended)
                # not yet tried here: ranked by what it gained before (a prior of one trial would
                # otherwise win on the exploration bonus alone)
                score = _ucb(gains, total, learnt) if gains else learnt[0]
                return lead, True, -(score + bonus), ctx.rng.random()
            if op.name in stats:  # an untried value of a tried operator: ranked by its operator's average
                return lead, False, -statistics.fmean(stats[op.name]), ctx.rng.random()
            return lead, False, -KNOWLEDGE_BONUS * (op.name in recommended), ctx.rng.random()  # an untried operator

        # A parent drawn from the archive to widen the search: the changes that give it a set of
        # mechanisms no node has (its child opens a cell for sure) go first, in the bandit's order
        # (ranking them by how often a change had opened cells, whatever it gained, left the exploring
        # fifth behind asi on the best gain). With none, the parent is built on as any other: aiming at a
        # speed or share bin alone spent evaluations on timing noise and cost AUC (bench/search_efficiency.py).
        new = (
            _new_sets(ctx, {(op.name, i): render(d) for op in applicable for i, d in enumerate(fresh[op.name])})
            if self.guided and ctx.explore is not None
            else set()
        )
        exploring = bool(new)
        if self.guided:
            best = {
                op.name: min(
                    (((op.name, i) not in new, *arm(op, d), d) for i, d in enumerate(fresh[op.name])),
                    key=lambda t: t[:5],
                    default=None,
                )
                for op in applicable
            }
            # Untried operators first, in the order the knowledge base suggests, then operators with an
            # untried value, then by the UCB of their best value; in each group those that only change the
            # speed come last unless they have earned more than noise (fitness is mostly quality: in 60
            # micro runs chunk_size gained 0.000 on average, and near a plateau, where every real change
            # costs a little, its zero topped the UCB). Building on an operator that just helped (a finite
            # UCB prior) mostly tries its other values on the child it improved: measured worse
            # (bench/search_efficiency.py, micro: AUC 0.25 vs 0.35 from the DeltaNet root).
            ranked = sorted(
                applicable,
                key=lambda op: (
                    best[op.name][:2] if best[op.name] else (True, 1),  # a new set; what a lesson says helped
                    op.name in stats or op.name in learned,
                    op.speed_only and statistics.fmean(stats.get(op.name) or [0.0]) <= NOISE_FLOOR,
                    best[op.name][2:5] if best[op.name] else (True, 0.0, 0.0),
                ),
            )
        else:
            ranked = ctx.rng.sample(applicable, len(applicable))
        exploit = self.guided and not exploring  # a transplant repeats a known gain: not exploring
        choice = self._transplant(ctx, parent) if exploit and ctx.rng.random() < TRANSPLANT_SHARE else None
        for op in ranked:
            if choice is not None:
                break
            if fresh[op.name]:
                choice = op, (best[op.name][-1] if self.guided else ctx.rng.choice(fresh[op.name])), None
        if choice is None:
            trace = Trace(
                role="researcher",
                prompt=_describe_context(ctx),
                response="every variant of this parent is already in the tree",
                decision={"operator": None},
            )
            return None, [trace]
        op, child, transplant = choice
        value = getattr(child, op.field)
        cited = self._cite(op.name, op.says[value], ctx.rng)
        motivation = (
            f"{op.says[value][0].upper()}{op.says[value][1:]} ({op.name}: {getattr(parent, op.field)!r} -> {value!r})."
        )
        if transplant:
            motivation += f" The same change raised fitness by {transplant['gain']:+.4f} at node {transplant['node']}"
            motivation += (
                f" ({transplant['mean_gain']:+.4f} on average over {transplant['times']} tries)."
                if transplant["times"] > 1
                else "."
            )
        if cited:
            motivation += f" Background: {cited['title']} [{cited['id']}]."
        used = ([cited["id"]] if cited else []) + [h.id for h in hits if not cited or h.id != cited["id"]]
        decision = {
            "operator": op.name,
            "from": getattr(parent, op.field),
            "to": value,
            "transplant": transplant,
            "bandit": {name: _summary(gains) for name, gains in stats.items()},
            "values": {f"{name}={value}": _summary(gains) for (name, value), gains in arms.items()},
            **_priors_used(
                lessons,
                {(o.name, json.dumps(getattr(d, o.field))) for o in applicable for d in fresh[o.name]},
                (op.name, json.dumps(value)),
                arms,
            ),
            "ranked": [o.name for o in ranked],
            **_explored(ctx, exploring),
            "query": query,
            "retrieved": [{"kind": h.kind, "id": h.id, "title": h.title} for h in hits],
            "cited": cited["id"] if cited else None,
            "knowledge": used,
            **({"notes": ctx.notes} if ctx.notes else {}),
        }
        trace = Trace(role="researcher", prompt=_describe_context(ctx), response=motivation, decision=decision)
        return Proposal(motivation=motivation, operator=op.name, design=child.model_dump(), knowledge=used), [trace]

    def _research_code(
        self, ctx: Context, query: str, hits: list, recommended: set
    ) -> tuple[Proposal | None, list[Trace]]:
        """A code edit of the parent's file: any file that meets the contract has some."""
        stats, arms = _code_stats(ctx.history)
        lessons = self._priors_for(ctx)
        donors = {
            r["id"]: ctx.code(r["id"])
            for r in ctx.references
            if r["id"] != ctx.parent["id"] and r.get("fitness") is not None
        }
        made = [
            e for op in code_edits.OPERATORS for e in code_edits.candidates(ctx.parent_code, op, donors, _max_size(ctx))
        ]
        ctx.rng.shuffle(made)  # (ties are broken at random)
        new = _new_sets(ctx, {e.code: e.code for e in made}) if self.guided and ctx.explore is not None else set()
        exploring = bool(new)
        if self.guided:  # as for a template parent: a change to a new set of mechanisms first when exploring
            made.sort(key=lambda edit: (edit.code not in new, *_code_rank(edit, stats, arms, recommended, lessons)))
        else:  # an operator drawn uniformly, then one of its edits
            ops = list(code_edits.OPERATORS)
            ctx.rng.shuffle(ops)
            made.sort(key=lambda edit: ops.index(edit.operator))
        ops = list(dict.fromkeys(e.operator for e in made))
        exploit = self.guided and not exploring
        choice = self._code_transplant(ctx) if exploit and ctx.rng.random() < TRANSPLANT_SHARE else None
        if choice is None:
            edit = code_edits.first(made, ctx.parent_code, ctx.seen_code)
            choice = (edit, None) if edit else None
        if choice is None:
            trace = Trace(
                role="researcher",
                prompt=_describe_context(ctx),
                response="no code edit of this parent is new to the tree",
                decision={"operator": None},
            )
            return None, [trace]
        edit, transplant = choice
        motivation = f"{edit.says[0].upper()}{edit.says[1:]} (code edit: {edit.operator})."
        if transplant:
            motivation += f" The same edit raised fitness by {transplant['gain']:+.4f} at node {transplant['node']}" + (
                f" ({transplant['mean_gain']:+.4f} on average over {transplant['times']} tries)."
                if transplant["times"] > 1
                else "."
            )
        cited = self._cite(code_edits.OPERATORS[edit.operator][1], edit.says, ctx.rng)
        if cited:
            motivation += f" Background: {cited['title']} [{cited['id']}]."
        used = ([cited["id"]] if cited else []) + [h.id for h in hits if not cited or h.id != cited["id"]]
        decision = {
            "operator": CODE + edit.operator,
            "edit": edit.spec,
            "transplant": transplant,
            "bandit": {CODE + name: _summary(gains) for name, gains in stats.items()},
            "arms": {name: _summary(gains) for name, gains in arms.items()},
            **_priors_used(
                lessons,
                {(CODE + e.operator, code_edits.arm(e.operator, e.spec)) for e in made},
                (CODE + edit.operator, code_edits.arm(edit.operator, edit.spec)),
                arms,
            ),
            "ranked": [CODE + op for op in ops],
            **_explored(ctx, exploring),
            "donors": sorted(donors),
            "query": query,
            "retrieved": [{"kind": h.kind, "id": h.id, "title": h.title} for h in hits],
            "cited": cited["id"] if cited else None,
            "knowledge": used,
            **({"notes": ctx.notes} if ctx.notes else {}),
        }
        trace = Trace(role="researcher", prompt=_describe_context(ctx), response=motivation, decision=decision)
        return Proposal(motivation=motivation, operator=CODE + edit.operator, code=edit.code, knowledge=used), [trace]

    @staticmethod
    def _code_transplant(ctx: Context) -> tuple[Edit, dict] | None:
        """The code edit that raised fitness most on average wherever it was made, made on this parent."""
        made: dict[str, list[dict]] = {}
        for row in ctx.history:
            if (row["operator"] or "").startswith(CODE) and row.get("edit") and row["fitness"] is not None:
                key = json.dumps([row["operator"], row["edit"]], sort_keys=True)
                made.setdefault(key, []).append({"gain": row["fitness"] - row["parent_fitness"], "node": row["node"]})
        ranked = sorted(
            (
                (statistics.fmean(r["gain"] for r in rows), max(rows, key=lambda r: r["gain"]), len(rows), key)
                for key, rows in made.items()
            ),
            key=lambda t: -t[0],
        )
        for mean, found, times, key in ranked:
            if mean <= NOISE_FLOOR:
                break
            operator, spec = json.loads(key)
            donor = spec.get("donor")
            edit = code_edits.redo(
                ctx.parent_code,
                operator[len(CODE) :],
                spec,
                {donor: ctx.code(donor)} if donor is not None else None,
                _max_size(ctx),
            )
            if edit is not None and not ctx.seen_code(edit.code):
                return edit, {
                    "node": found["node"],
                    "gain": round(found["gain"], 4),
                    "mean_gain": round(mean, 4),
                    "times": times,
                }
        return None

    @staticmethod
    def _transplant(ctx: Context, parent: Design) -> tuple[Operator, Design, dict] | None:
        """Experience: the single-field change that raised fitness most, on average over every time it
        was made in the tree (transplants included), and that this parent lacks, applied to it (so
        improvements found in different branches get combined). The average, not the best case: one
        large gain on a weak node had the same change transplanted six times onto strong nodes it
        hurt (one micro run of 40 evaluations)."""
        made: dict[tuple, list[dict]] = {}
        for row in ctx.history:
            change = row.get("change") or {}
            if row["fitness"] is not None and len(change) == 1:
                ((field, value),) = change.items()
                made.setdefault((field, json.dumps(value)), []).append(
                    {
                        "gain": row["fitness"] - row["parent_fitness"],
                        "node": row["node"],
                        "field": field,
                        "value": value,
                    }
                )
        ranked = sorted(
            (
                (statistics.fmean(r["gain"] for r in rows), max(rows, key=lambda r: r["gain"]), len(rows))
                for rows in made.values()
            ),
            key=lambda t: -t[0],
        )
        for mean, found, times in ranked:
            if mean <= NOISE_FLOOR:
                break
            op = next((o for o in OPERATORS if o.field == found["field"] and found["value"] in o.values), None)
            child = parent.model_copy(update={found["field"]: found["value"]})
            if (
                op is not None
                and op.applies(parent)
                and getattr(parent, found["field"]) != found["value"]
                and not ctx.seen(child.model_dump())
            ):
                return (
                    op,
                    child,
                    {
                        "node": found["node"],
                        "gain": round(found["gain"], 4),
                        "mean_gain": round(mean, 4),
                        "times": times,
                    },
                )
        return None

    def _cite(self, operator: str, change: str, rng: random.Random) -> dict | None:
        """The entry linked to this operator that best matches the change being made."""
        linked = {e["id"]: e for e in self.knowledge.for_operator(operator)}
        for hit in self.knowledge.search(change, k=10, kind="entry"):
            if hit.id in linked:
                return linked[hit.id]
        return rng.choice(list(linked.values())) if linked else None

    # -- engineer -------------------------------------------------------------------------------
    def engineer(self, ctx: Context, proposal: Proposal, failure: dict | None) -> tuple[Proposal | None, list[Trace]]:
        if proposal.design is None:  # a code edit: the researcher already made it
            if failure is None:
                return proposal, [
                    Trace(role="engineer", response="the code edit as proposed", decision={"action": "code_edit"})
                ]
            note = f"no repair known for a code edit that failed with '{failure['reason']}'; discarding the candidate"
            return None, [
                Trace(
                    role="engineer", prompt=failure.get("detail") or "", response=note, decision={"action": "discard"}
                )
            ]
        design = Design.model_validate(proposal.design)
        if failure is None:
            code = render(design, title="A candidate from archlab's offline brain.", summary=proposal.motivation)
            return proposal.model_copy(update={"code": code}), [
                Trace(role="engineer", response="rendered the design", decision={"action": "render"})
            ]
        fix = _repair(design, failure["reason"])
        if fix is None:
            note = f"no repair known for '{failure['reason']}'; discarding the candidate"
            return None, [
                Trace(
                    role="engineer", prompt=failure.get("detail") or "", response=note, decision={"action": "discard"}
                )
            ]
        field, value = fix
        repaired = design.model_copy(update={field: value})
        motivation = f"{proposal.motivation} Repaired after '{failure['reason']}': set {field} = {value!r}."
        code = render(repaired, title="A candidate from archlab's offline brain.", summary=motivation)
        trace = Trace(
            role="engineer",
            prompt=failure.get("detail") or "",
            response=f"set {field} = {value!r}",
            decision={"action": "repair", "reason": failure["reason"], "field": field, "value": value},
        )
        return proposal.model_copy(update={"design": repaired.model_dump(), "code": code, "motivation": motivation}), [
            trace
        ]

    # -- analyst --------------------------------------------------------------------------------
    def analyse(self, ctx: Context, node: dict, result: dict) -> tuple[str, list[Trace]]:
        parent, root = ctx.parent, ctx.root
        head = f"Node {node['id']} ({node['operator']} from node {parent['id']})"
        if not result["ok"]:
            text = f"{head} failed: {result['reason']} — {(result.get('detail') or '').splitlines()[0][:200] if result.get('detail') else ''}"
            return text, [
                Trace(role="analyst", response=text, decision={"verdict": "failed", "reason": result["reason"]})
            ]
        m, p = result["metrics"], parent.get("metrics") or {}
        delta = m["val_loss"] - p.get("val_loss", m["val_loss"])
        speed = m["tokens_per_s"] / p["tokens_per_s"] - 1 if p.get("tokens_per_s") else 0.0
        verdict = "better" if delta < -0.01 else "worse" if delta > 0.01 else "no clear change"
        parts = [
            f"{head}: validation loss {m['val_loss']:.3f} nats/byte vs parent {p.get('val_loss', float('nan')):.3f} "
            f"({delta:+.3f}, {verdict}); {m['tokens_per_s'] / 1000:.1f}k tokens/s ({speed:+.0%} vs parent).",
        ]
        if root.get("metrics") and node["id"] != root["id"]:
            parts.append(f"Against the root: {m['val_loss'] - root['metrics']['val_loss']:+.3f} nats/byte.")
        done = [s for s in ctx.siblings if s.get("val_loss") is not None and s["id"] != node["id"]]
        if done:
            best = min(done, key=lambda s: s["val_loss"])
            parts.append(f"Best sibling so far: node {best['id']} ({best['operator']}) at {best['val_loss']:.3f}.")
        lesson = {
            "better": "keep this change and build on it",
            "worse": "this change hurts at this budget",
            "no clear change": "the change is neutral here; prefer the cheaper variant",
        }[verdict]
        parts.append(f"Lesson: {node['operator']} — {lesson}.")
        text = " ".join(parts)
        return text, [
            Trace(role="analyst", response=text, decision={"verdict": verdict, "delta_val_loss": delta, "speed": speed})
        ]


def _repair(design: Design, reason: str) -> tuple[str, object] | None:
    """The repairs the offline engineer knows: undo what usually causes each failure."""
    if reason == "nan":
        for field, safe in (("qk_norm", True), ("beta", "sigmoid"), ("feature_map", "silu")):
            if getattr(design, field) != safe and (design.core == "delta" or field != "qk_norm"):
                return field, safe
    if reason in ("timeout", "memory"):
        for field, safe in (("chunk_size", 64), ("heads", 1), ("conv_size", 4)):
            if getattr(design, field) != safe:
                return field, safe
    return None


def credits(history: list[dict]) -> list[tuple[str, str | None, float, dict]]:
    """How the researcher credits every finished child: (operator, arm, fitness gain over the parent
    (failed: FAILED_GAIN), the history row). A template operator's arm is the value it set (JSON), a
    code edit's is code_edits.arm(); None where the child's change is not known."""
    out = []
    for row in history:
        name = row["operator"] or ""
        op = BY_NAME.get(name)
        if op is not None:
            change = row.get("change") or {}
            out.append((name, json.dumps(change[op.field]) if op.field in change else None, _gain(row), row))
        elif name.startswith(CODE):
            edit = row.get("edit")
            out.append((name, code_edits.arm(name[len(CODE) :], edit) if edit else None, _gain(row), row))
    return out


def _bandit_stats(history: list[dict]) -> tuple[dict[str, list[float]], dict[tuple[str, str], list[float]]]:
    """Fitness gain over the parent of every finished child (failed: FAILED_GAIN), per operator and
    per (operator, the value it set)."""
    per_operator: dict[str, list[float]] = {}
    per_value: dict[tuple[str, str], list[float]] = {}
    for name, arm, gain, _ in credits(history):
        if name in BY_NAME:
            per_operator.setdefault(name, []).append(gain)
            if arm is not None:
                per_value.setdefault((name, arm), []).append(gain)
    return per_operator, per_value


def _code_stats(history: list[dict]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Fitness gains of the children made by code edits, per operator and per arm (code_edits.arm)."""
    per_operator: dict[str, list[float]] = {}
    per_arm: dict[str, list[float]] = {}
    for name, arm, gain, _ in credits(history):
        if name.startswith(CODE):
            per_operator.setdefault(name[len(CODE) :], []).append(gain)
            if arm is not None:
                per_arm.setdefault(arm, []).append(gain)
    return per_operator, per_arm


def _new_sets(ctx: Context, codes: dict) -> set:
    """For a parent drawn from the archive (ctx.explore), the keys of the children's `codes` whose set
    of mechanisms no node has: such a child opens a cell, whatever its speed and share."""
    held = set(ctx.explore.get("held", ()))
    return {key for key, code in codes.items() if named(mechanisms(code)) not in held}


def _explored(ctx: Context, exploring: bool) -> dict:
    """For the decision trace of a parent drawn from the archive: its cell, the empty cells next to it,
    the sets of mechanisms held, and whether the proposal aimed at a new set (`new_set`)."""
    return {} if ctx.explore is None else {"explore": {**ctx.explore, "new_set": exploring}}


def _lesson_kind(ctx: Context, lessons: dict, parent: Design) -> bool | None:
    """Whether the first change lessons say helped (above noise; template changes before code edits,
    each by gain), that this run has not made and that applies to this template parent, is a code edit
    (True) or a template operator's (False);
    None when there is none. In a run whose best lineage was code edits made on a template root, the
    template operators' own lessons are few, and the code share alone kept the researcher on them
    (bench/lessons.py, DeltaNet root: 8 evaluations to run 1's best with lessons, 7 without)."""
    if not lessons:
        return None
    _, values = _bandit_stats(ctx.history)
    _, code_arms = _code_stats(ctx.history)
    helped = [(key, p) for key, p in lessons.items() if p["mean_gain"] > NOISE_FLOOR]
    # Template changes first, by gain, then code edits: a code edit turns the template parent into a
    # file for good (its descendants lose the template operators), so taken first it cut run 1's path
    # short (bench/lessons.py: run 2 made run 1's last step, a code gate, at its sixth evaluation and
    # ended 0.04 below run 1's best, where run 1 had made its template changes first).
    for (name, arm), p in sorted(helped, key=lambda kv: (kv[0][0].startswith(CODE), -kv[1]["mean_gain"])):
        if name in BY_NAME:
            op = BY_NAME[name]
            child = parent.model_copy(update={op.field: json.loads(arm)})
            if (
                (name, arm) not in values
                and op.applies(parent)
                and child != parent
                and not ctx.seen(child.model_dump())
            ):
                return False
        elif name.startswith(CODE) and arm not in code_arms:
            operator = name[len(CODE) :]
            edits = code_edits.candidates(ctx.parent_code, operator, None, _max_size(ctx))
            if any(
                code_edits.arm(operator, e.spec) == arm
                and code_edits.valid(e, ctx.parent_code)
                and not ctx.seen_code(e.code)
                for e in edits
            ):
                return True
    return None


def _prior(lesson: dict | None, own: list[float]) -> tuple[float, float] | None:
    """A pooled lesson as (mean gain, weight in trials of this run), discounted as this run's own
    trials of the same arm grow."""
    if not lesson:
        return None
    return lesson["mean_gain"], PRIOR_WEIGHT * lesson["trials"] * PRIOR_HALF_LIFE / (PRIOR_HALF_LIFE + len(own))


def _lead(prior: tuple[float, float] | None, own: list[float]) -> int:
    """0: a lesson says this arm helped and this run has not tried it yet; 2: it hurt; else 1."""
    if prior is None or own:
        return 1
    return 0 if prior[0] > NOISE_FLOOR else 2 if prior[0] < -NOISE_FLOOR else 1


def _priors_used(lessons: dict, weighed: set, chosen: tuple, arms: dict) -> dict:
    """For the decision trace: the lessons behind the arms this choice weighed, and the chosen one's."""
    used = {
        f"{name}={arm}": {
            "trials": p["trials"],
            "mean_gain": round(p["mean_gain"], 4),
            "weight": round(_prior(p, arms.get((name, arm)) or arms.get(arm) or [])[1], 3),
            "lessons": p["lessons"],
        }
        for (name, arm), p in sorted(lessons.items())
        if (name, arm) in weighed
    }
    if not used:
        return {}
    return {"priors": used, "prior_chosen": lessons[chosen]["lessons"] if chosen in lessons else []}


def _code_rank(edit: Edit, stats: dict, arms: dict, recommended: set, lessons: dict | None = None) -> tuple:
    """Untried operators first (those the knowledge base recommends for the parent, then in the prior
    order of code_edits.OPERATORS), then by UCB: of the edit's arm where it was made before; where
    only the opposite bet was made, of that record mirrored (a constant's effect is locally monotone:
    when scaling it up cost, scaling it down is the bet; in the first foreign-root benchmark the decay
    divisor 8 -> 16 lost 0.09-0.15 five times of five and 8 -> 4 gained 0.09-0.19 three times of three,
    but the operator's mean kept the default from ever trying it); else of half its operator's mean
    (another site or variant of the same operator is a related bet, not the same one). Lessons of
    earlier runs (`lessons`, by (operator, arm)) lead and are merged in as discounted priors."""
    key = code_edits.arm(edit.operator, edit.spec)
    gains = arms.get(key)
    prior = _prior((lessons or {}).get((CODE + edit.operator, key)), gains or [])
    lead = _lead(prior, gains or [])
    if edit.operator not in stats and prior is None:
        return (
            lead,
            0,
            code_edits.OPERATORS[edit.operator][1] not in recommended,
            list(code_edits.OPERATORS).index(edit.operator),
        )
    total = sum(len(v) for v in stats.values()) + (prior[1] if prior else 0)
    if prior is not None:  # not yet tried here: ranked by what it gained before
        return lead, 1, -(_ucb(gains, total, prior) if gains else prior[0])
    opposite = [-g for g in arms.get(code_edits.arm(edit.operator, edit.spec, flip=True)) or [] if g != FAILED_GAIN]
    return lead, 1, -_ucb(gains or opposite or [statistics.fmean(stats[edit.operator]) / 2], total)


def _max_size(ctx: Context) -> int:
    return min(code_edits.MAX_SIZE, ctx.limits.get("seq_len") or code_edits.MAX_SIZE)


def _gain(row: dict) -> float:
    return FAILED_GAIN if row["fitness"] is None else row["fitness"] - row["parent_fitness"]


def _ucb(gains: list[float], total: float, prior: tuple[float, float] | None = None) -> float:
    """UCB1 of an arm's gains; a prior (mean, weight) counts as `weight` more trials of its mean."""
    mean, weight = prior or (0.0, 0.0)
    n = len(gains) + weight
    return (sum(gains) + mean * weight) / n + 0.1 * math.sqrt(2 * math.log(total + 1) / n)


def _summary(gains: list[float]) -> dict:
    return {"n": len(gains), "mean_gain": round(sum(gains) / len(gains), 4)}


def _describe_context(ctx: Context) -> str:
    parent = ctx.parent
    lines = [
        f"parent: node {parent['id']} fitness={parent.get('fitness')} design={json.dumps(parent['design'], sort_keys=True)}"
    ]
    lines += [
        f"reference: node {r['id']} fitness={r.get('fitness')} operator={r.get('operator')}" for r in ctx.references
    ]
    return "\n".join(lines)
