"""Why a sample shown on the page was kept or pruned, in words: the step and its reason with
the figures that decided it (whose duplicate, which CLIP-score threshold, which concept's
budget), from the sample's ledger fields (``model_examples.Shown``) and the report's settings.

A report of an older version lacks the ledger fields: a card then says what the section it
is shown in tells (``fallback``, the step that pruned it there) and no more.
"""

from __future__ import annotations

from typing import Any

_KEEPS = {"hard": "the {budget} of {size} farthest from its centre",
          "easy": "the {budget} of {size} closest to its centre",
          "random": "a seeded random {budget} of {size}"}


def _concept(report: dict[str, Any], cid: int | None) -> dict[str, Any] | None:
    if cid is None:
        return None
    return next((c for c in report.get("clusters") or [] if c.get("id") == cid), None)


def _setting(report: dict[str, Any], section: str, name: str) -> Any:  # noqa: ANN401
    """A setting as the step's report section or, else, the run's parameters give it."""
    own = (report.get(section) or {}).get(name)
    return own if own is not None else \
        ((report.get("parameters") or {}).get(section) or {}).get(name)


def _semdedup(s: dict[str, Any], report: dict[str, Any]) -> str:
    eps = _setting(report, "semdedup", "eps")
    text = "semdedup: near-duplicate"
    if s.get("dup_of"):
        text += f" of uid {s['dup_of']}"
    if s.get("dup_similarity") is not None:
        text += f" (similarity {s['dup_similarity']:.4f}"
        text += f" > 1 − eps = {1 - eps:g})" if eps is not None else ")"
    return text


def _clip_filter(s: dict[str, Any], report: dict[str, Any]) -> str:
    reason = s.get("reason") or ""
    score = s.get("clip_score")
    if score is None or reason.startswith("no clip score"):
        return f"clip_filter: {reason or 'low CLIP score'}"
    threshold = _setting(report, "clip_filter", "threshold")
    if threshold is not None:
        text = f"clip_filter: CLIP score {score:.4f} below the threshold {threshold:g}"
    else:
        fraction = _setting(report, "clip_filter", "keep_fraction")
        text = f"clip_filter: CLIP score {score:.4f} not in the top {fraction:g}" \
            if fraction is not None else f"clip_filter: CLIP score {score:.4f} too low"
        lowest = (report.get("examples") or {}).get("clip_lowest_kept")
        if lowest is not None:
            text += f" (the lowest score kept is {lowest:.4f})"
    if "RANDOM" in reason:
        text += " (a CLIP model with RANDOM weights)"
    return text


def _dbp(s: dict[str, Any], report: dict[str, Any], cid: int | None) -> str:
    cid = s["cluster"] if s.get("cluster") is not None else cid
    concept = _concept(report, cid)
    if concept is None:
        return f"dbp: outside its concept's budget{': ' + s['reason'] if s.get('reason') else ''}"
    keep = _setting(report, "dbp", "keep") or "hard"
    which = _KEEPS.get(keep, "{budget} of {size}").format(budget=concept["budget"],
                                                         size=concept["size"])
    text = f"dbp: outside concept {cid}'s budget — it keeps {which}"
    if s.get("distance") is not None:
        text += f" (this one: distance {s['distance']:.4f})"
    return text


def explain(s: dict[str, Any], report: dict[str, Any], fallback: str = "",
            concept: int | None = None) -> str:
    """Why ``s`` was kept, removed or failed; ``fallback`` is the step that removed it where
    the report does not say (an older version's), ``concept`` the concept it is shown in."""
    status = s.get("status")
    if status == "kept":
        found = _concept(report, s["cluster"] if s.get("cluster") is not None else concept)
        return f"kept: within concept {found['id']}'s budget of {found['budget']}" \
            if found is not None else "kept"
    stage = s.get("stage") or fallback
    if status == "failed":
        return f"failed at {stage or 'read'}: {s.get('reason') or 'unusable'}"
    if stage == "semdedup":
        return _semdedup(s, report)
    if stage == "clip_filter":
        return _clip_filter(s, report)
    if stage == "dbp":
        return _dbp(s, report, concept)
    if stage:
        return f"{stage}: {s.get('reason') or 'removed'}"
    return "removed (this report does not say by which step: see the ledger)"


def explain_kept_for(s: dict[str, Any], report: dict[str, Any]) -> str:
    """Why the copy a duplicate was removed in favour of is kept or, where a step removed it
    in turn, which one and why."""
    if s.get("status") == "kept":
        return "kept copy" + explain(s, report).removeprefix("kept")
    if s.get("status") == "removed":
        if not s.get("stage"):
            return ("semdedup kept this copy; a later step removed it (this report does not "
                    "say which: see the ledger)")
        if s["stage"] == "semdedup":
            return "itself removed by " + explain(s, report)
        return f"semdedup kept this copy; later removed by {explain(s, report)}"
    return explain(s, report)
