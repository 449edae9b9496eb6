"""The threshold rules are one registry (`evaluation.rules`): a rule added there alone reaches
the CLI's --rule help, calibrate's and ship's rule checks, the fitted threshold and the cards."""

import subprocess
import sys

import numpy as np
import pytest

from pneumoscan.evaluation import calibration as cal
from pneumoscan.evaluation.rules import THRESHOLD_RULES, make_rule

# A new rule, written the way the registry's own are, then registered before the CLI is built.
NEW_RULE = """
from dataclasses import dataclass
from typing import ClassVar
from pneumoscan.evaluation.rules import THRESHOLD_RULES, ThresholdRule

@dataclass(frozen=True)
class Fraction(ThresholdRule):
    name: ClassVar[str] = "fraction"
    summary: ClassVar[str] = "a fixed share of the probability scale"
    cost_fn: float = 1.0

    def choose(self, targets, scores, prior):
        return 1.0 / (2.0 + self.cost_fn)

    def describe(self, source="validation"):
        return f"1 / (2 + {self.cost_fn:g}), whatever the {source} films say"

THRESHOLD_RULES["fraction"] = Fraction
"""


def test_a_rule_added_to_the_registry_reaches_the_cli_the_fit_and_the_cards():
    code = NEW_RULE + (
        "from typer.testing import CliRunner; from pneumoscan.cli import app\n"
        "for command in ('calibrate', 'ship'):\n"
        "    text = ' '.join(CliRunner().invoke(app, [command, '--help']).output.replace('│', ' ').split())\n"
        "    assert 'fraction (a fixed share of the probability scale)' in text, text\n"
        "import numpy as np; from pneumoscan.evaluation import calibration as cal\n"
        "from pneumoscan.site.calibrate import Request\n"
        "from pneumoscan.training.ship import _rule_text\n"
        "logits = np.array([[0.0, -2], [0, -1], [0, 1], [0, 2]]); targets = np.array([0, 0, 1, 1])\n"
        "assert cal.fit(logits, targets, 'fraction', cost_fn=2.0).threshold == 0.25\n"
        "request = Request(rule='fraction', cost_fn=2.0)\n"
        "assert request.describe() == {'name': 'fraction', 'params': {'cost_fn': 2.0}, "
        "'description': '1 / (2 + 2), whatever the site calibration films say'}\n"
        "assert _rule_text('fraction', 2.0) == ': 1 / (2 + 2), whatever the validation films say.'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "fraction" not in THRESHOLD_RULES  # registered in that process only


def test_every_rule_has_a_name_summary_typed_params_and_card_words():
    targets = np.array([0] * 25 + [1] * 75)
    scores = np.r_[np.linspace(0.0, 0.4, 25), np.linspace(0.6, 1.0, 75)]
    for name, rule_class in THRESHOLD_RULES.items():
        rule = make_rule(name)
        assert rule.name == name and rule_class.summary
        assert 0.0 < rule.choose(targets, scores, 0.75) <= 1.0
        assert rule.describe("validation") and not rule.describe().endswith(".")
        assert rule.record() == {"name": name, "params": rule.params()}
    assert make_rule("cost", cost_fn=4.0, target_sensitivity=0.9).params() == {"cost_fn": 4.0}
    assert cal.choose_threshold(make_rule("cost", cost_fn=4.0), targets, scores) == 0.2
    with pytest.raises(ValueError, match="positive"):
        make_rule("cost", cost_fn=0.0)
    with pytest.raises(ValueError, match="choose one of balanced, youden, sensitivity"):
        make_rule("magic")
