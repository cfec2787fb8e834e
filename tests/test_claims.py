"""Each verdict rule on hand-made numbers: which word, which strength, which reason (no model involved)."""

from __future__ import annotations

import math

import pytest

from abspos_utils import claims
from abspos_utils.estimates import Comparison, Estimate

POSITIVE, STRADDLING = Estimate(0.1, 0.05, 0.2), Estimate(0.0, -0.1, 0.1)
WIDE = Estimate(0.3, -0.4, 0.9)  # wider than the rule's bound claims.SHARE_BOUND
NAN = Estimate.missing()


def removal(share: Estimate, note: str = "") -> Comparison:
    return Comparison(1.0, 1.0 - share.value, Estimate(-share.value, -share.high, -share.low), share, note)


def c5(bulk: list[Estimate], every: list[Estimate] | None = None, stand_in: str = "") -> claims.Verdict:
    domains = {"bulk": {f"r{k}": removal(e) for k, e in enumerate(bulk)}}
    if every is not None:
        domains["all"] = {f"r{k}": removal(e) for k, e in enumerate(every)}
    return claims.c5_bos_replacement("m", domains, stand_in)


def test_every_word_is_one_of_five_and_not_run_is_not_a_verdict():
    assert claims.WORDS == ("supported", "mixed", "not supported", "inconclusive", "n/a")
    assert claims.NOT_RUN not in claims.WORDS


def test_c1_counts_intervals_above_zero():
    assert claims.c1_absolute_position("m", POSITIVE, POSITIVE).verdict == claims.SUPPORTED
    assert claims.c1_absolute_position("m", POSITIVE, STRADDLING).verdict == claims.MIXED
    assert claims.c1_absolute_position("m", STRADDLING, STRADDLING).verdict == claims.NOT_SUPPORTED


def test_an_interval_wider_than_the_bound_gives_inconclusive_with_the_reason():
    verdict = claims.c1_absolute_position("m", POSITIVE, WIDE)
    assert verdict.verdict == claims.INCONCLUSIVE
    assert "L_abs_late" in verdict.reason and "wider than the rule's bound 0.5" in verdict.reason
    assert verdict.rule == claims.RULES["C1"] and "wider than 0.5" in verdict.rule


def test_a_nan_number_gives_inconclusive_and_says_which():
    verdict = claims.c1_absolute_position("m", POSITIVE, NAN)
    assert verdict.verdict == claims.INCONCLUSIVE and "L_abs_late is NaN" in verdict.reason


def test_a_verdict_quotes_the_estimates_in_the_table_key_scheme():
    numbers = claims.c1_absolute_position("m", POSITIVE, Estimate(0.3, 0.25, 0.4)).numbers
    assert Estimate.from_row(numbers, "L_abs_early") == POSITIVE
    assert Estimate.from_row(numbers, "L_abs_late") == Estimate(0.3, 0.25, 0.4)


def test_c5_about_40_percent_on_a_majority_of_replacements():
    close, far = Estimate(0.38, 0.2, 0.5), Estimate(0.05, -0.1, 0.2)
    assert c5([close, close, far]).verdict == claims.SUPPORTED
    assert c5([close, far, far]).verdict == claims.MIXED
    assert c5([far, far]).verdict == claims.NOT_SUPPORTED


def test_c5_an_interval_holding_both_0_and_40_percent_cannot_tell():
    both = Estimate(0.2, -0.1, 0.5)
    verdict = c5([both, both])
    assert verdict.verdict == claims.INCONCLUSIVE and "all 2 replacements cannot tell" in verdict.reason


def test_c5_an_interval_of_thousands_of_percent_is_inconclusive_not_a_refutation():
    """The issue's Gemma case: -322% [-4277%, +7846%] is no evidence against the claim."""
    verdict = c5([Estimate(-3.22, -42.77, 78.46)] * 5)
    assert verdict.verdict == claims.INCONCLUSIVE


def test_c5_a_zero_baseline_gives_no_ratio_and_its_note_is_the_reason():
    note = "no ratio: the baseline 0.0076 [-0.0010, 0.0150] is indistinguishable from zero"
    verdict = claims.c5_bos_replacement("m", {"bulk": {"zeros": removal(NAN, note)}})
    assert verdict.verdict == claims.INCONCLUSIVE and note in verdict.reason
    assert math.isnan(verdict.numbers["bulk: zeros"])


def test_c5_a_replacement_that_adds_structure_is_not_40_percent_however_wide_its_ratio():
    """SmolLM2's random vector: L_res 0.067 -> 0.457, ratio interval beyond ±1000% but the paired difference
    is clearly above zero, so nothing was removed. Over a baseline indistinguishable from zero it stays undecided."""
    adds = Comparison(0.067, 0.457, Estimate(0.39, 0.3, 0.5), NAN, "no ratio: its interval reaches beyond ±1000%")
    verdict = claims.c5_bos_replacement("m", {"bulk": {"random vector": adds}})
    assert verdict.verdict == claims.NOT_SUPPORTED
    near_zero = Comparison(0.008, 0.03, Estimate(0.02, 0.01, 0.03), NAN, "no ratio: the baseline is indistinguishable from zero")
    assert claims.c5_bos_replacement("m", {"bulk": {"zeros": near_zero}}).verdict == claims.INCONCLUSIVE


def test_c5_undecided_on_one_domain_and_not_40_percent_on_the_other_is_inconclusive():
    """The issue's Gemma case: no ratio on keys j >= 1, 74-95% on all keys: not evidence against the claim."""
    verdict = c5([NAN, NAN], [Estimate(0.9, 0.84, 0.94), Estimate(0.74, 0.69, 0.77)])
    assert verdict.verdict == claims.INCONCLUSIVE and "on keys j >= 1, all 2 replacements cannot tell" in verdict.reason


def test_c5_says_on_which_domain_40_percent_is_met():
    close, far = Estimate(0.4, 0.3, 0.5), Estimate(0.9, 0.85, 0.95)
    verdict = c5([far, far], [close, close])
    assert verdict.verdict == claims.MIXED  # met on all keys only
    assert verdict.numbers["met_bulk"] == 0 and verdict.numbers["met_all"] == 2
    assert "keys j >= 1: about 40% for none" in verdict.summary and "all keys: about 40% for r0, r1" in verdict.summary
    assert c5([close, close], [close, close]).verdict == claims.SUPPORTED


def test_a_stand_in_arm_is_labelled_with_its_reason():
    verdict = c5([Estimate(0.4, 0.3, 0.5)], stand_in=claims.BOS_STAND_IN)
    assert (verdict.strength, verdict.strength_reason) == (claims.STAND_IN, claims.BOS_STAND_IN)
    assert "stand-in (a BOS prepended to a model trained without one)" in verdict.show()
    direct = claims.c1_absolute_position("m", POSITIVE, POSITIVE)
    assert (direct.strength, direct.strength_reason) == (claims.DIRECT, "")


def test_a_claim_that_does_not_apply_gives_n_a_with_the_reason():
    verdict = claims.ntk_not_applicable("C5", "smollm2-135m-ntk")
    assert verdict.verdict == claims.NOT_APPLICABLE and verdict.strength == claims.STAND_IN
    assert "NTK" in verdict.reason and verdict.rule == claims.RULES["C5"]
    assert set(claims.NOT_FOR_NTK) == {"C1", "C2", "C3", "C5", "C6"}


@pytest.mark.parametrize("checks, expected", [
    ({"a": POSITIVE, "b": POSITIVE}, claims.SUPPORTED),
    ({"a": POSITIVE, "b": STRADDLING}, claims.MIXED),
    ({"a": POSITIVE, "b": WIDE}, claims.INCONCLUSIVE),
])
def test_c4_judges_the_checks_of_each_role(checks, expected):
    verdict = claims.c4_architecture("m", "ntk", POSITIVE, POSITIVE, Estimate(0.5, 0.4, 0.6), checks,
                                     claims.NTK_STAND_IN)
    assert verdict.verdict == expected
    assert list(verdict.numbers)[:3] == ["balance", "balance_low", "balance_high"]
    assert verdict.strength_reason == claims.NTK_STAND_IN


def test_c4_without_both_components_is_not_supported_when_the_checks_fail_too():
    verdict = claims.c4_architecture("m", "sliding", POSITIVE, STRADDLING, POSITIVE, {"slope": STRADDLING})
    assert verdict.verdict == claims.NOT_SUPPORTED


def test_every_verdict_prints_its_rule_under_it():
    shown = claims.c1_absolute_position("m", POSITIVE, POSITIVE).show().splitlines()
    assert shown[0] == "C1 on m: SUPPORTED [direct]" and shown[-1] == "  rule: " + claims.RULES["C1"]
