"""Computed verdicts for the claims C1–C6 of DESIGN.md §1.

Each function takes measured numbers (:class:`~abspos_utils.estimates.Estimate` and
:class:`~abspos_utils.estimates.Comparison` values read from the tables the chapter wrote) and returns a
:class:`Verdict` with

- its word, one of :data:`WORDS`: "supported", "not supported", "mixed", "inconclusive" (the interval
  cannot tell: it is NaN, wider than the rule's stated bound, or holds both the null and the paper's
  value) or "n/a" (the claim does not apply to the model by design, e.g. C1–C3, C5, C6 on the NTK
  variant). "not run" is a state of the scorecard, never a verdict;
- its strength: "direct", or "stand-in" with the reason (inference-time NTK scaling of weights trained
  without it, a BOS prepended to a model trained without one, a window imposed on weights trained
  without one);
- the rule that decided it (its text is data, in :data:`RULES`), the numbers behind it in the tables'
  column names, a summary, and a one-sentence ``reason`` when it is inconclusive or n/a.

A difference counts only when its bootstrap 95% interval excludes zero. No verdict is typed by hand
anywhere in the book.

To add a claim: its rule text in :data:`RULES`, a function here that returns ``_verdict(...)``, and the
claim in ``scorecard.CLAIMS`` and ``scorecard.EXPECTED``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .estimates import Comparison, Estimate

SUPPORTED, NOT_SUPPORTED, MIXED, INCONCLUSIVE, NOT_APPLICABLE = (
    "supported", "not supported", "mixed", "inconclusive", "n/a")
WORDS = (SUPPORTED, MIXED, NOT_SUPPORTED, INCONCLUSIVE, NOT_APPLICABLE)  # every verdict is one of these
NOT_RUN = "not run"  # a state of the scorecard (the notebook that tests the claim has not run), not a verdict
DIRECT, STAND_IN = "direct", "stand-in"
NTK_STAND_IN = "inference-time NTK scaling of weights trained without it"
BOS_STAND_IN = "a BOS prepended to a model trained without one"
WINDOW_STAND_IN = "a sliding window imposed on weights trained without one"
#: The claims that do not apply to an NTK variant: it is a stand-in for C4's NTK arm only.
NOT_FOR_NTK = ("C1", "C2", "C3", "C5", "C6")

PAPER_REMOVED_SHARE = 0.40  # the abstract: "removes 40% of the residual-stream component at early queries"
SHARE_BOUND = 0.5  # an interval of a share (or of a difference of shares) wider than this cannot decide
RATIO_BOUND = 1.0  # a removed-share interval wider than 100 percentage points cannot decide "about 40%"
ZERO_TOLERANCE = 1e-5  # a share this small is zero to float error
IDENTICAL_SPREAD = 1e-4  # relative spread of the position-0 stream below which prompts agree
DIFFERENT_SPREAD = 1e-2  # relative spread above which the position-0 streams of two prompts differ
FINGERPRINT_IDENTICAL = 0.99  # mean cosine above which sink writes are "the same"
FINGERPRINT_MARGIN = 0.05  # how much lower the cosine must be for sink writes to "vary with the token"

_INCONCLUSIVE = (f"Inconclusive when an interval the rule needs is NaN or wider than {SHARE_BOUND:g} "
                 "(a share's, or a difference of shares').")

#: The rule of each claim, as the verdicts quote it and the chapters print it under each verdict.
RULES = {
    "C1": "Supported when the non-relative share L_abs = L_mask + L_res of log a (keys j >= 1, median over heads) "
          "has a 95% interval above zero at early and at late queries; mixed when at one only; not supported "
          "when at neither. " + _INCONCLUSIVE,
    "C2": "Supported when, on the zero control (one repeated token, no BOS), L_mask has a 95% interval above zero "
          "while L_res is zero to float error (the mask alone makes absolute position), and on natural text the "
          "count term -log n_i of L_mask has an interval above zero; mixed when only the control holds. "
          + _INCONCLUSIVE,
    "C3": f"Supported when (a) the position-0 residual stream is identical across prompts that share their first "
          f"token (largest relative spread over depth below {IDENTICAL_SPREAD:g}: a closed system), (b) it differs "
          f"when the first token differs (spread above {DIFFERENT_SPREAD:g}), (c) the model has sink-reading heads "
          "(sink-rate interval above zero) and (d) a varying position 0 adds within-row absolute structure: "
          "L_res(repeated token + BOS) minus L_res(repeated token, no BOS) has an interval above zero; mixed when "
          "(a) holds with some of (b)-(d); not supported when (a) fails. " + _INCONCLUSIVE,
    "C4": "Judged on the balance B = L_res / (L_res + L_mask) and on the level of L_res (keys j >= 1, medians over "
          "heads; B as a ratio of summed energies; paired bootstrap), per architecture: both components present "
          "(L_res and L_mask intervals above zero at early queries); NTK — B(NTK) - B(standard) and L_res(NTK) - L_res(standard) at late queries of long prompts have "
          "intervals below zero; sliding window — the slopes of late-query B and L_res over the depth of the "
          "sliding layers have intervals above zero; standard — on the same weights, B lies above the NTK arm's "
          "and below the imposed-window arm's (both paired differences exclude zero). Supported when every check "
          "holds, mixed when some do, not supported when none does. " + _INCONCLUSIVE,
    "C5": f"For each replacement of the position-0 embedding and each key domain (keys j >= 1, primary; all keys), "
          f"the removed share of L_res (early queries, median over heads, paired bootstrap) is \"about "
          f"{PAPER_REMOVED_SHARE:.0%}\" when its 95% interval contains {PAPER_REMOVED_SHARE:.0%} and excludes 0, and "
          f"is not about {PAPER_REMOVED_SHARE:.0%} when its interval excludes it or the replacement adds L_res to a "
          f"baseline above zero (paired difference above zero), and is undecided when it is NaN (a baseline "
          f"indistinguishable from zero gives no ratio), holds both 0 and {PAPER_REMOVED_SHARE:.0%}, or is wider "
          f"than {RATIO_BOUND:.0%}. On a domain: supported when about {PAPER_REMOVED_SHARE:.0%} for a majority of "
          "replacements, mixed when for some, not supported when for none while a majority is decided, else "
          "inconclusive. The verdict: supported when both domains are, mixed when either is supported or mixed, "
          "not supported when both are, else inconclusive.",
    "C6": f"Supported when the sink writes W_O v_0 of sink-reading heads are (a) the same across inputs that share "
          f"the position-0 token (mean cosine >= {FINGERPRINT_IDENTICAL}), (b) vary with that token (mean cosine "
          f"lower than (a) by more than {FINGERPRINT_MARGIN}), (c) the same for one first token in different texts "
          f"(>= {FINGERPRINT_IDENTICAL}), and (d) replacing BOS by random tokens lowers the sink rate (paired "
          "interval of the change below zero); mixed when some hold; not supported when none does. "
          + _INCONCLUSIVE,
}


@dataclass
class Verdict:
    """One claim's verdict on one model; ``numbers`` starts with its headline number. ``strength`` is
    "direct" or "stand-in" (``strength_reason`` says why); ``reason`` is one sentence when the verdict is
    "inconclusive" or "n/a"."""

    claim: str
    model: str
    verdict: str
    rule: str
    numbers: dict = field(default_factory=dict)
    summary: str = ""
    strength: str = DIRECT
    strength_reason: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def show(self) -> str:
        """The verdict as a chapter prints it: word, strength, summary, reason and the rule under it."""
        strength = self.strength + (f" ({self.strength_reason})" if self.strength_reason else "")
        lines = [f"{self.claim} on {self.model}: {self.verdict.upper()} [{strength}]", f"  {self.summary}"]
        if self.reason:
            lines.append(f"  why {self.verdict}: {self.reason}")
        lines.append(f"  rule: {self.rule}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Reading an interval
# ---------------------------------------------------------------------------------------------------


def undecided(estimate: Estimate, name: str, bound: float = SHARE_BOUND) -> str:
    """Why ``estimate`` cannot decide a check ("" when it can): NaN, or an interval wider than ``bound``."""
    if not estimate.finite:
        return f"{name} is NaN (too few prompts, or a ratio whose denominator is not above zero)"
    if estimate.width > bound:
        return f"the interval of {name} {estimate.show()} is wider than the rule's bound {bound:g}"
    return ""


def _count(checks: list[bool]) -> str:
    if all(checks):
        return SUPPORTED
    return MIXED if any(checks) else NOT_SUPPORTED


def _strength(stand_in: str) -> tuple[str, str]:
    return (STAND_IN, stand_in) if stand_in else (DIRECT, "")


def _verdict(claim: str, model: str, word: str, numbers: dict, summary: str, stand_in: str = "",
             needed: dict[str, Estimate] | None = None, reason: str = "") -> Verdict:
    """The verdict; "inconclusive" instead when a number is NaN or an estimate in ``needed`` (name ->
    estimate) cannot decide (:func:`undecided`), with the reason in one sentence."""
    why = [undecided(e, name) for name, e in (needed or {}).items()]
    why += [f"{name} is NaN" for name, value in numbers.items()
            if isinstance(value, float) and math.isnan(value) and not any(name in w for w in why)]
    why = [w for w in why if w]
    if why and word != NOT_APPLICABLE:
        word, reason = INCONCLUSIVE, "Not decidable: " + "; ".join(why) + "."
    return Verdict(claim, model, word, RULES[claim], numbers, summary, *_strength(stand_in), reason)


def not_applicable(claim: str, model: str, reason: str, stand_in: str = "") -> Verdict:
    """The "n/a" verdict of a claim that does not apply to ``model`` by design, with the reason."""
    return Verdict(claim, model, NOT_APPLICABLE, RULES[claim], {}, reason, *_strength(stand_in), reason)


def ntk_not_applicable(claim: str, model: str) -> Verdict:
    """The "n/a" verdict of a claim in :data:`NOT_FOR_NTK` on an NTK variant."""
    return not_applicable(claim, model, f"{claim} is about trained models; the NTK variant is {NTK_STAND_IN}, "
                                        "a stand-in for C4's NTK arm only.", NTK_STAND_IN)


# ---------------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------------


def c1_absolute_position(model: str, early: Estimate, late: Estimate, stand_in: str = "") -> Verdict:
    """C1 from the headline L_abs at early and late queries (keys j >= 1)."""
    return _verdict("C1", model, _count([early.above_zero, late.above_zero]),
                    {**early.columns("L_abs_early"), **late.columns("L_abs_late")},
                    f"non-relative share of log-attention (keys j>=1): early {early.show()}, late {late.show()}",
                    stand_in, {"L_abs_early": early, "L_abs_late": late})


def c2_mask(model: str, control_mask: Estimate, control_res: Estimate, text_count: Estimate,
            stand_in: str = "") -> Verdict:
    """C2 from L_mask and L_res (ratio) on the zero control and the count term on natural text."""
    control = control_mask.above_zero and abs(control_res.value) < ZERO_TOLERANCE
    return _verdict(
        "C2", model, _count([control, control and text_count.above_zero]),
        {**control_mask.columns("control_L_mask"), "control_L_res": control_res.value,
         **text_count.columns("text_L_mask_count")},
        f"zero control: L_mask {control_mask.show()}, L_res {control_res.value:.1e}; "
        f"natural text count term {text_count.show()}",
        stand_in, {"control_L_mask": control_mask, "text_L_mask_count": text_count},
    )


def c3_residual(model: str, same_first_spread: float, varied_first_spread: float, sink_rate: Estimate,
                bos_transfer: Comparison, stand_in: str = "") -> Verdict:
    """C3 from the position-0 spreads, the sink rate and the L_res a distinct position 0 adds."""
    closed = same_first_spread < IDENTICAL_SPREAD
    others = [varied_first_spread > DIFFERENT_SPREAD, sink_rate.above_zero, bos_transfer.difference.above_zero]
    return _verdict(
        "C3", model, _count([closed, *others]) if closed else NOT_SUPPORTED,
        {**bos_transfer.difference.columns("L_res_transfer"), "same_first_relative_spread": same_first_spread,
         "varied_first_relative_spread": varied_first_spread, **sink_rate.columns("sink_rate")},
        f"position-0 spread: same first token {same_first_spread:.1e}, varied {varied_first_spread:.2f}; "
        f"sink rate {sink_rate.show()}; L_res added by a distinct position 0: {bos_transfer.difference.show()}",
        stand_in, {"sink_rate": sink_rate, "L_res_transfer": bos_transfer.difference},
    )


def c4_architecture(model: str, role: str, l_res: Estimate, l_mask: Estimate, balance: Estimate,
                    checks: dict[str, Estimate], stand_in: str = "") -> Verdict:
    """C4 for one role, "ntk", "sliding" or "standard", from the level ``l_res``, ``l_mask`` (early queries)
    and the late-query ``balance`` of its own condition (keys j >= 1) and its architecture-specific
    ``checks`` (name -> estimate, each of
    which must lie above zero — a quantity that should fall is passed negated, e.g. standard - NTK):

    - "ntk": ``balance_standard_minus_ntk``, ``L_res_standard_minus_ntk`` (paired, late queries);
    - "sliding": ``balance_depth_slope``, ``L_res_depth_slope`` (late queries, sliding layers);
    - "standard": ``balance_standard_minus_ntk``, ``balance_window_minus_standard`` (paired, same weights).
    """
    present = l_res.above_zero and l_mask.above_zero
    numbers = {**balance.columns("balance"), **l_res.columns("L_res"), **l_mask.columns("L_mask")}
    for name, estimate in checks.items():
        numbers.update(estimate.columns(name))
    detail = "; ".join(f"{name} {estimate.show()}" for name, estimate in checks.items())
    needed = {"L_res": l_res, "L_mask": l_mask, **checks}
    return _verdict("C4", model, _count([present, *(e.above_zero for e in checks.values())]), numbers,
                    f"{role}: late-query balance L_res/(L_res+L_mask) {balance.show()}; early queries: L_res "
                    f"{l_res.show()}, L_mask {l_mask.show()}; {detail}", stand_in, needed)


def _about_paper(comparison: Comparison) -> bool | None:
    """True when the removed share's interval holds the paper's 40% and excludes 0; False when it excludes
    40%, or when the replacement adds L_res to a baseline above zero (paired difference above zero: nothing
    was removed, however wide the ratio); None when it cannot tell (NaN, both values inside, or wider than
    :data:`RATIO_BOUND`)."""
    removed = comparison.removed
    if comparison.before > 0 and comparison.difference.above_zero and "indistinguishable" not in comparison.note:
        return False
    if not removed.finite or removed.width > RATIO_BOUND:
        return None
    if removed.contains(PAPER_REMOVED_SHARE):
        return None if removed.contains(0.0) else True
    return False


def _c5_domain(comparisons: dict[str, Comparison]) -> tuple[str, list[str], list[str]]:
    """The C5 word on one key domain, the replacements at about 40% and the undecided ones."""
    status = {label: _about_paper(c) for label, c in comparisons.items()}
    hits = [label for label, s in status.items() if s is True]
    undecided_ = [label for label, s in status.items() if s is None]
    total = len(status)
    if len(hits) * 2 > total:
        word = SUPPORTED
    elif hits:
        word = MIXED
    elif (total - len(undecided_)) * 2 > total:
        word = NOT_SUPPORTED
    else:
        word = INCONCLUSIVE
    return word, hits, undecided_


DOMAIN_NAMES = {"bulk": "keys j >= 1", "all": "all keys"}


def c5_bos_replacement(model: str, comparisons: dict[str, dict[str, Comparison]], stand_in: str = "") -> Verdict:
    """C5 from the removed share of each replacement on each key domain (``{"bulk": {label: Comparison},
    "all": {...}}``; "bulk" is required)."""
    words, numbers, parts, why = {}, {}, [], []
    for domain, by_label in comparisons.items():
        words[domain], hits, undecided_ = _c5_domain(by_label)
        numbers[f"met_{domain}"] = len(hits)
        numbers[f"{domain}: L_res original"] = next(iter(by_label.values())).before if by_label else math.nan
        for label, c in by_label.items():
            numbers.update(c.removed.columns(f"{domain}: {label}"))
        shown = "; ".join(f"{label} " + (c.removed.show(percent=True) if c.removed.finite else
                                          f"no ratio (L_res {c.before:.4f} -> {c.after:.4f}, difference "
                                          f"{c.difference.show()})") for label, c in by_label.items())
        met = ", ".join(hits) if hits else "none"
        parts.append(f"{DOMAIN_NAMES[domain]}: about {PAPER_REMOVED_SHARE:.0%} for {met} "
                     f"({len(hits)} of {len(by_label)}) — {shown}")
        notes = sorted({c.note for c in by_label.values() if c.note})
        if undecided_:
            which = f"all {total} replacements" if len(undecided_) == (total := len(by_label)) else ", ".join(undecided_)
            why.append(f"on {DOMAIN_NAMES[domain]}, {which} cannot tell"
                       + (f" ({'; '.join(notes)})" if notes else " (the interval holds 0 and 40%, or is too wide)"))
    values = set(words.values())
    if values == {SUPPORTED}:
        word = SUPPORTED
    elif values & {SUPPORTED, MIXED}:
        word = MIXED
    elif values == {NOT_SUPPORTED}:
        word = NOT_SUPPORTED
    else:
        word = INCONCLUSIVE
    reason = ("Not decidable: " + "; ".join(why) + ".") if word == INCONCLUSIVE else ""
    summary = " | ".join(parts) + f" (paper: {PAPER_REMOVED_SHARE:.0%})"
    if why and word != INCONCLUSIVE:
        summary += "; undecided: " + "; ".join(why)
    return Verdict("C5", model, word, RULES["C5"], numbers, summary, *_strength(stand_in), reason)


def c6_fingerprint(model: str, same_bos: float, varied_first: float, same_token_other_text: float,
                   random_replacement: Comparison, stand_in: str = "") -> Verdict:
    """C6 from the fingerprint cosines of three conditions and the sink-rate change under random first tokens."""
    change = random_replacement.difference
    checks = [same_bos >= FINGERPRINT_IDENTICAL, varied_first < same_bos - FINGERPRINT_MARGIN,
              same_token_other_text >= FINGERPRINT_IDENTICAL, change.below_zero]
    return _verdict(
        "C6", model, _count(checks),
        {"cos_varied_first": varied_first, "cos_same_bos": same_bos, "cos_same_token_other_text": same_token_other_text,
         "sink_rate_before": random_replacement.before, "sink_rate_after": random_replacement.after,
         **change.columns("sink_rate_change")},
        f"fingerprint cosine: same BOS {same_bos:.3f}, varied first token {varied_first:.3f}, same token in other "
        f"texts {same_token_other_text:.3f}; sink rate {random_replacement.before:.2f} -> "
        f"{random_replacement.after:.2f} with random first tokens (change {change.show()})",
        stand_in, {"sink_rate_change": change},
    )
