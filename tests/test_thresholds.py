import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.evaluate.thresholds import binary_metrics, choose_threshold, parse_rule

Y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
S = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_binary_metrics_hand_computed():
    m = binary_metrics(Y, S, 0.5)  # calls: 0.5 (FP), 0.6-0.9 (TP x4); 0.35 missed
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 1, 1, 4)
    assert m["sensitivity"] == 0.8 and m["specificity"] == 0.8 and m["ppv"] == 0.8 and m["npv"] == 0.8


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("sensitivity:1.0", 0.35),  # the highest threshold that still catches every positive
        ("sensitivity:0.8", 0.6),
        ("specificity:1.0", 0.6),  # the lowest threshold with no false positive
        ("youden", 0.6),  # J = 0.8 at 0.35 and at 0.6: ties go to the higher threshold
        ("max-f1", 0.35),  # F1 10/11 at 0.35 beats 8/9 at 0.6
        ("cost:10", 0.35),  # a missed case costs 10 false alarms: catch everything
        ("fixed:0.42", 0.42),
    ],
)
def test_rules_pick_the_hand_computed_threshold(rule, expected):
    assert choose_threshold(Y, S, parse_rule(rule)) == pytest.approx(expected)


def test_target_sensitivity_is_met_where_it_was_chosen():
    rng = np.random.default_rng(0)
    y = rng.random(1000) < 0.2
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1)
    t = choose_threshold(y, s, parse_rule("sensitivity:0.95"))
    assert binary_metrics(y, s, t)["sensitivity"] >= 0.95


@pytest.mark.parametrize("text", ["sensitivity", "sensitivity:1.5", "cost:-1", "fixed:x", "median"])
def test_bad_rules_are_clear(text):
    with pytest.raises(CnnlabError, match="threshold rule|unknown threshold rule"):
        parse_rule(text)
