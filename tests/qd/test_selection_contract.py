"""The contract every registered selection rule keeps (run over the whole registry)."""

from __future__ import annotations

import numpy as np
import pytest

from cycleqd.config import SelectionConfig
from cycleqd.qd import SELECTIONS, check_rule_settings

SCORES = np.array([[0.2, 0.9, 0.4], [0.8, 0.1, 0.4], [0.5, 0.5, 0.4], [0.9, 0.9, 0.4]])


@pytest.mark.parametrize("method", sorted(SELECTIONS))
def test_probabilities_are_a_distribution_over_the_elites(method: str) -> None:
    settings = SelectionConfig(method=method).settings.model_dump()
    check_rule_settings(method, settings)  # its defaults are valid
    probs = SELECTIONS[method](SCORES, **settings)
    assert probs.shape == (len(SCORES),)
    assert np.all(probs >= 0)
    assert np.isclose(probs.sum(), 1.0)
    np.testing.assert_array_equal(SELECTIONS[method](SCORES, **settings), probs)  # deterministic
    order = [2, 0, 3, 1]  # relabelling the elites permutes their probabilities
    np.testing.assert_allclose(SELECTIONS[method](SCORES[order], **settings), probs[order])
    single = SELECTIONS[method](SCORES[:1], **settings)
    np.testing.assert_allclose(single, [1.0])


@pytest.mark.parametrize("method", sorted(SELECTIONS))
def test_config_section_takes_exactly_the_rules_keyword_settings(method: str) -> None:
    section = SelectionConfig(method=method)
    assert section.method == method
    for name, owners in SelectionConfig.spec.owners.items():
        if method in owners:
            continue
        default = SelectionConfig.model_fields[name].default
        with pytest.raises(ValueError, match=rf"{name} is a setting of the {owners[0]} selection rule"):
            SelectionConfig(method=method, **{name: default * 2 if default else 1.0})
