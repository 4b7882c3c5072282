"""Concept counterfactuals as a registered method: the named kinds of change of
:mod:`cfx.concepts` (colour, structure, whole, and one abnormal region at a time), each the
smallest local edit of its kind that the selected detector calls normal, or reported as not
sufficient on its own. Works with either detector; needs no trained generator.
"""
from __future__ import annotations

from typing import Any, ClassVar

from cfx.explainers.base import Explanation, register
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, SearchContext
from cfx.metrics.edits import coincide, edit_diversity


@register
class Concepts(CounterfactualExplainer):
    """One counterfactual per concept (:func:`cfx.concepts.named_concepts`), as local edits."""

    name: ClassVar[str] = "concepts"
    order: ClassVar[int] = 7
    typical_evaluations: ClassVar[int | None] = 60
    label: ClassVar[str] = "Concepts (kinds of change)"
    heavy: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"regions": 3, "path_steps": 11}

    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        from cfx.concepts import named_concepts

        concepts = named_concepts(ctx.image, ctx.content, ctx.heat, max_regions=int(params["regions"]))
        exp.info["concepts"] = len(concepts)
        return [Proposal(c.content, ctx.image, contents={c.name: c.content}, allowed=c.allowed, concept=c.name,
                         fallback=False)
                for c in concepts]

    def _explain(self, image, target, seed, params) -> Explanation:
        exp = super()._explain(image, target, seed, params)
        # a region concept whose edit is another concept's (the one region holds the whole
        # anomaly) is that concept: said once, not shown twice; one whose region holds nothing to
        # change (the residue of the map's halo) is left out
        kept, same, empty = [], [], []
        for c in exp.counterfactuals:
            twin = next((k for k in kept if coincide(image, k.image, c.image)), None)
            if twin is not None and c.concept.startswith("region"):
                same.append([c.concept, twin.concept])
                continue
            if c.concept.startswith("region") and c.metrics["edit_area"] == 0.0:
                empty.append(c.concept)
                continue
            kept.append(c)
        if same or empty:
            exp.counterfactuals = kept
            exp.info["coincide"] = same
            exp.info["nothing_to_change"] = empty
            exp.info["concepts"] = len(kept)
            if len(kept) > 1:
                exp.info.update(edit_diversity(image, [c.image for c in kept]))
        short = [c.concept for c in exp.counterfactuals if c.concept and not c.valid]
        if short and any(c.valid for c in exp.counterfactuals):
            exp.info["not_sufficient"] = short
        return exp
