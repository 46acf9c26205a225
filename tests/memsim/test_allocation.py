"""memsim.allocate_under_budget: the least summed sensitivity within an energy budget, against every choice."""

import itertools
import random

import pytest

from memsim import Candidate, allocate_under_budget


def brute_force(candidates: dict[str, list[Candidate]], budget: float) -> tuple[float, float]:
    """The least summed sensitivity of any choice within the budget, and the least energy at it."""
    fits = [
        (sum(c.sensitivity for c in choice), sum(c.energy for c in choice))
        for choice in itertools.product(*candidates.values())
        if sum(c.energy for c in choice) <= budget
    ]
    return min(fits)


# A hand-made table: weight bits 2/3/5 per layer, energy rising with the bits; layer "b" is the sensitive one, so
# the budget's bits go there first. At budget 9: b at 5 bits (energy 4) and a, c at 2 bits is 8 with 0.35; b at 5
# with a at 3 is 9 with 0.05 + 0.10 + 0.10 = 0.25, the optimum (with c at 3 instead, 0.33).
TABLE = {
    "a": [Candidate(2, 2.0, 0.15), Candidate(3, 3.0, 0.05), Candidate(5, 5.0, 0.0)],
    "b": [Candidate(2, 2.0, 0.90), Candidate(3, 3.0, 0.40), Candidate(5, 4.0, 0.10)],
    "c": [Candidate(2, 2.0, 0.10), Candidate(3, 3.0, 0.08), Candidate(5, 5.0, 0.0)],
}


def test_the_allocation_picks_the_known_optimum_of_a_hand_made_table():
    chosen = allocate_under_budget(TABLE, 9.0)
    assert chosen.settings == {"a": 3, "b": 5, "c": 2}
    assert (chosen.energy, chosen.sensitivity) == (9.0, pytest.approx(0.25))
    assert allocate_under_budget(TABLE, 6.0).settings == {"a": 2, "b": 2, "c": 2}
    assert allocate_under_budget(TABLE, 100.0).settings == {"a": 5, "b": 5, "c": 5}


def test_the_allocation_is_the_best_choice_within_every_budget_of_random_tables():
    rng = random.Random(0)
    for _ in range(20):
        table = {
            f"layer{i}": [Candidate(k, rng.uniform(0.5, 4.0), rng.uniform(-0.1, 1.0)) for k in range(4)]
            for i in range(6)
        }
        least = sum(min(c.energy for c in options) for options in table.values())
        for budget in (least, least + 1.0, least + 4.0, least + 100.0):
            chosen = allocate_under_budget(table, budget)
            picked = [next(c for c in table[layer] if c.setting == s) for layer, s in chosen.settings.items()]
            assert chosen.energy == pytest.approx(sum(c.energy for c in picked)) and chosen.energy <= budget
            assert chosen.sensitivity == pytest.approx(sum(c.sensitivity for c in picked))
            assert (chosen.sensitivity, chosen.energy) == pytest.approx(brute_force(table, budget))


def test_a_budget_below_the_cheapest_choice_and_a_layer_without_candidates_are_errors():
    with pytest.raises(ValueError, match="fits the budget 5: the cheapest needs 6"):
        allocate_under_budget(TABLE, 5.0)
    with pytest.raises(ValueError, match=r"layer\(s\) \['d'\] have no candidate"):
        allocate_under_budget({**TABLE, "d": []}, 100.0)
