"""Computed verdicts for the claims C1–C6 of DESIGN.md §1.

Each function takes measured numbers (dicts from :mod:`abspos_utils.metrics`) and returns a
:class:`Verdict`: "supported", "not supported" or "mixed", the rule that decided it (stated in the
docstring and copied into the verdict), and the numbers behind it. A difference counts only when its
bootstrap 95% interval excludes zero. No verdict is typed by hand anywhere in the book.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SUPPORTED, NOT_SUPPORTED, MIXED = "supported", "not supported", "mixed"
PAPER_REMOVED_SHARE = 0.40  # the abstract: "removes 40% of the residual-stream component at early queries"
ZERO_TOLERANCE = 1e-5  # a share this small is zero to float error
IDENTICAL_SPREAD = 1e-4  # relative spread of the position-0 stream below which prompts agree
FINGERPRINT_IDENTICAL = 0.99  # mean cosine above which sink writes are "the same"


@dataclass
class Verdict:
    """One claim's verdict on one model; ``numbers`` starts with its headline number."""

    claim: str
    model: str
    verdict: str
    rule: str
    numbers: dict = field(default_factory=dict)
    summary: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _above_zero(result: dict, low: str = "ci_low") -> bool:
    return result[low] > 0


def _count(conditions: list[bool]) -> str:
    if all(conditions):
        return SUPPORTED
    return MIXED if any(conditions) else NOT_SUPPORTED


def _ci(result: dict, value: str = "value", low: str = "ci_low", high: str = "ci_high", pct: bool = False) -> str:
    fmt = "{:.1%}" if pct else "{:.4f}"
    return f"{fmt.format(result[value])} [{fmt.format(result[low])}, {fmt.format(result[high])}]"


def c1_absolute_position(model: str, early: dict, late: dict) -> Verdict:
    """C1: supported when the non-relative share L_abs = L_mask + L_res of log a (keys j >= 1, median over
    heads) has a 95% interval above zero at early and at late queries; mixed when at one only."""
    checks = [_above_zero(early), _above_zero(late)]
    return Verdict(
        "C1", model, _count(checks), c1_absolute_position.__doc__.split(": ", 1)[1].replace("\n    ", " "),
        {"L_abs_early": early["value"], "early_low": early["ci_low"], "early_high": early["ci_high"],
         "L_abs_late": late["value"], "late_low": late["ci_low"], "late_high": late["ci_high"]},
        f"non-relative share of log-attention (keys j>=1): early {_ci(early)}, late {_ci(late)}",
    )


def c2_mask(model: str, control_mask: dict, control_res: dict, text_count: dict) -> Verdict:
    """C2: supported when, on the zero control (one repeated token, no BOS), L_mask has a 95% interval above
    zero while L_res is zero to float error (the mask alone makes absolute position), and on natural text
    the count term -log n_i of L_mask has an interval above zero; mixed when only the control holds."""
    control = _above_zero(control_mask) and abs(control_res["value"]) < ZERO_TOLERANCE
    checks = [control, control and _above_zero(text_count)]
    return Verdict(
        "C2", model, _count(checks), c2_mask.__doc__.split(": ", 1)[1].replace("\n    ", " "),
        {"control_L_mask": control_mask["value"], "control_L_mask_low": control_mask["ci_low"],
         "control_L_res": control_res["value"], "text_L_mask_count": text_count["value"],
         "text_count_low": text_count["ci_low"], "text_count_high": text_count["ci_high"]},
        f"zero control: L_mask {_ci(control_mask)}, L_res {control_res['value']:.1e}; "
        f"natural text count term {_ci(text_count)}",
    )


def c3_residual(model: str, same_first_spread: float, varied_first_spread: float, sink_rate: dict,
                bos_transfer: dict) -> Verdict:
    """C3: supported when (a) the position-0 residual stream is identical across prompts that share their
    first token (largest relative spread over depth below 1e-4: a closed system), (b) it differs when the
    first token differs (spread above 1e-2), (c) the model has sink-reading heads (sink-rate interval above
    zero) and (d) a varying position 0 adds within-row absolute structure: L_res(repeated token + BOS) minus
    L_res(repeated token, no BOS) has an interval above zero; mixed when (a) holds with some of (b)-(d)."""
    closed = same_first_spread < IDENTICAL_SPREAD
    others = [varied_first_spread > 1e-2, sink_rate["ci_low"] > 0, bos_transfer["diff_low"] > 0]
    verdict = _count([closed, *others]) if closed else NOT_SUPPORTED
    return Verdict(
        "C3", model, verdict, c3_residual.__doc__.split(": ", 1)[1].replace("\n    ", " "),
        {"L_res_transfer": bos_transfer["difference"], "transfer_low": bos_transfer["diff_low"],
         "transfer_high": bos_transfer["diff_high"], "same_first_relative_spread": same_first_spread,
         "varied_first_relative_spread": varied_first_spread, "sink_rate": sink_rate["sink_rate"],
         "sink_rate_low": sink_rate["ci_low"]},
        f"position-0 spread: same first token {same_first_spread:.1e}, varied {varied_first_spread:.2f}; "
        f"sink rate {sink_rate['sink_rate']:.2f}; L_res added by a distinct position 0: "
        f"{_ci(bos_transfer, 'difference', 'diff_low', 'diff_high')}",
    )


def c4_architecture(model: str, role: str, l_res: dict, l_mask: dict, specific: dict | None) -> Verdict:
    """C4: both components present (L_res and L_mask intervals above zero, keys j >= 1, early queries) and
    the architecture-specific part: NTK — L_res(NTK) - L_res(standard), paired, has an interval below zero;
    sliding window — the slope of late-query L_res over the depth of the sliding layers has an interval above
    zero; standard — its L_res lies between the NTK variant's and the sliding-window model's. Supported when
    both parts hold, mixed when one does."""
    both = _above_zero(l_res) and _above_zero(l_mask)
    numbers = {"L_res": l_res["value"], "L_res_low": l_res["ci_low"], "L_mask": l_mask["value"],
               "L_mask_low": l_mask["ci_low"]}
    if role == "ntk":
        holds = specific["diff_high"] < 0
        numbers.update(ntk_minus_standard=specific["difference"], diff_low=specific["diff_low"],
                       diff_high=specific["diff_high"])
        detail = f"L_res(NTK) - L_res(standard) = {_ci(specific, 'difference', 'diff_low', 'diff_high')}"
    elif role == "sliding":
        holds = specific["ci_low"] > 0
        numbers.update(depth_slope=specific["slope_per_layer"], slope_low=specific["ci_low"],
                       slope_high=specific["ci_high"])
        detail = f"slope of late L_res over sliding-layer depth {_ci(specific, 'slope_per_layer')} per layer"
    else:
        low, high = sorted((specific["ntk"], specific["sliding"]))
        holds = low <= l_res["value"] <= high
        numbers.update(ntk_L_res=specific["ntk"], sliding_L_res=specific["sliding"])
        detail = f"L_res {l_res['value']:.4f} vs NTK {specific['ntk']:.4f} and sliding {specific['sliding']:.4f}"
    return Verdict("C4", model, _count([both, holds]),
                   c4_architecture.__doc__.split(": ", 1)[1].replace("\n    ", " "), numbers,
                   f"L_res {_ci(l_res)}, L_mask {_ci(l_mask)}; {detail}")


def c5_bos_replacement(model: str, comparisons: list[dict]) -> Verdict:
    """C5: for each replacement of the position-0 embedding, the removed share of L_res (keys j >= 1, early
    queries, median over heads, paired bootstrap) is "about 40%" when its 95% interval contains 0.40 and
    excludes 0. Supported when that holds for a majority of replacements, mixed when for some, not
    supported when for none."""
    hits = [c["removed_low"] <= PAPER_REMOVED_SHARE <= c["removed_high"] and c["removed_low"] > 0 for c in comparisons]
    verdict = SUPPORTED if sum(hits) * 2 > len(hits) else MIXED if any(hits) else NOT_SUPPORTED
    numbers = {c["after"]: c["removed_share"] for c in comparisons}
    parts = [f"{c['after']}: {_ci(c, 'removed_share', 'removed_low', 'removed_high', pct=True)}" for c in comparisons]
    return Verdict("C5", model, verdict, c5_bos_replacement.__doc__.split(": ", 1)[1].replace("\n    ", " "),
                   numbers, "removed share of L_res — " + "; ".join(parts) + " (paper: 40%)")


def c6_fingerprint(model: str, same_bos: float, varied_first: float, same_token_other_text: float,
                   random_replacement: dict) -> Verdict:
    """C6: supported when the sink writes W_O v_0 of sink-reading heads are (a) the same across inputs that
    share the position-0 token (mean cosine >= 0.99), (b) vary with that token (mean cosine lower than (a) by
    more than 0.05), (c) the same for one first token in different texts (>= 0.99), and (d) replacing BOS by
    random tokens lowers the sink rate (paired interval of the change below zero); mixed when some hold."""
    checks = [same_bos >= FINGERPRINT_IDENTICAL, varied_first < same_bos - 0.05,
              same_token_other_text >= FINGERPRINT_IDENTICAL, random_replacement["diff_high"] < 0]
    return Verdict(
        "C6", model, _count(checks), c6_fingerprint.__doc__.split(": ", 1)[1].replace("\n    ", " "),
        {"cos_varied_first": varied_first, "cos_same_bos": same_bos, "cos_same_token_other_text": same_token_other_text,
         "sink_rate_before": random_replacement["rate_before"], "sink_rate_after": random_replacement["rate_after"],
         "change_low": random_replacement["diff_low"], "change_high": random_replacement["diff_high"]},
        f"fingerprint cosine: same BOS {same_bos:.3f}, varied first token {varied_first:.3f}, same token in other "
        f"texts {same_token_other_text:.3f}; sink rate {random_replacement['rate_before']:.2f} -> "
        f"{random_replacement['rate_after']:.2f} with random first tokens",
    )
