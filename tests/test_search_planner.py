"""The search planner as pure functions: rounds, refinement, early stop, the choice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubeslim.api.manifest import parse_spec
from kubeslim.api.spec import SearchSpec
from kubeslim.api.status import SearchOutcome
from kubeslim.errors import SpecError
from kubeslim.planner.search import (
    Measured,
    candidate,
    candidate_from_name,
    candidate_name,
    next_round,
    select,
)


def search(**over: object) -> SearchSpec:
    fields: dict[str, object] = {"targets": [0.3, 0.5, 0.7], "maxAccuracyDrop": 0.01}
    fields.update(over)
    return SearchSpec.model_validate(fields)


def measured(target: float, drop_points: float, speedup: float, round_: int = 0) -> Measured:
    return Measured(candidate(target, round_), drop_points / 100, speedup)


def test_first_round_is_the_list_or_an_even_grid() -> None:
    assert [c.target for c in next_round(search(), [])] == [0.3, 0.5, 0.7]
    grid = search(targets=[], range={"min": 0.2, "max": 0.8}, candidatesPerRound=4)
    assert [c.target for c in next_round(grid, [])] == [0.2, 0.4, 0.6, 0.8]
    assert {c.round for c in next_round(grid, [])} == {0}


def test_refinement_narrows_between_deepest_inside_and_shallowest_outside() -> None:
    s = search(rounds=2, candidatesPerRound=1)
    done = [measured(0.3, 0.2, 1.5), measured(0.5, 0.8, 2.0), measured(0.7, 3.0, 3.0)]
    nxt = next_round(s, done)
    assert [(c.target, c.round) for c in nxt] == [(0.6, 1)]
    # the refinement found a faster model within budget: the next round narrows again
    done.append(measured(0.6, 0.9, 2.5, round_=1))
    assert [c.target for c in next_round(s, done)] == [0.65]


def test_search_stops_when_a_round_does_not_improve_the_objective() -> None:
    s = search(rounds=3, candidatesPerRound=1)
    done = [measured(0.3, 0.2, 1.5), measured(0.5, 0.8, 2.0), measured(0.7, 3.0, 3.0)]
    done.append(measured(0.6, 1.5, 2.6, round_=1))  # outside the budget: no improvement
    assert next_round(s, done) == []


def test_search_stops_after_its_rounds_and_at_the_resolution() -> None:
    done = [measured(0.3, 0.2, 1.5), measured(0.5, 0.8, 2.0), measured(0.7, 3.0, 3.0)]
    assert next_round(search(rounds=0), done) == []
    assert next_round(search(rounds=2, resolution=0.2), done) == []
    # every target within budget: nothing deeper to try inside the list
    inside = [measured(0.3, 0.1, 1.5), measured(0.5, 0.2, 2.0)]
    assert next_round(search(rounds=2), inside) == []


def test_select_takes_the_best_objective_within_budget_not_the_deepest() -> None:
    s = search()
    done = [measured(0.3, 0.2, 1.5), measured(0.5, 0.9, 2.2), measured(0.6, 1.0, 2.0)]
    done.append(measured(0.7, 3.0, 3.0))
    chosen = select(s, done)
    assert chosen.outcome is SearchOutcome.selected
    assert chosen.chosen is not None and chosen.chosen.target == 0.5


def test_a_drop_equal_to_the_budget_is_within_it() -> None:
    chosen = select(search(), [measured(0.5, 1.0, 2.0)])
    assert chosen.chosen is not None


def test_no_candidate_within_budget_points_at_the_closest() -> None:
    s = search(maxAccuracyDrop=0.001)
    done = [
        measured(0.3, 0.5, 1.5),
        measured(0.5, 0.9, 2.2),
        Measured(candidate(0.7, 0), None, None),
    ]
    chosen = select(s, done)
    assert chosen.outcome is SearchOutcome.no_candidate_within_budget
    assert chosen.chosen is None
    assert chosen.closest is not None and chosen.closest.target == 0.3


def test_failed_candidates_are_never_chosen() -> None:
    chosen = select(search(), [Measured(candidate(0.3, 0), None, None)])
    assert chosen.chosen is None and chosen.closest is None


def test_candidate_names_are_stable_and_parse_back() -> None:
    assert candidate_name(0.5) == "t5000"
    assert candidate_name(0.0625) == "t0625"
    assert candidate_from_name("t6500").target == 0.65
    with pytest.raises(ValueError, match="candidate 'x1'"):
        candidate_from_name("x1")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"maxAccuracyDrop": 0.01}, "exactly one of targets and range"),
        ({"targets": [0.3, 1.2], "maxAccuracyDrop": 0.01}, "strictly between 0 and 1"),
        ({"targets": [0.3, 0.3], "maxAccuracyDrop": 0.01}, "distinct"),
        ({"range": {"min": 0.6, "max": 0.4}, "maxAccuracyDrop": 0.01}, "min must be below max"),
        ({"targets": [0.3]}, "maxAccuracyDrop"),
    ],
)
def test_bad_search_specs_name_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SearchSpec.model_validate(fields)


def test_a_search_without_pruning_or_int8_is_refused_in_one_line() -> None:
    body = {
        "model": {"architecture": "resnet18", "numClasses": 10},
        "dataset": {"name": "digits"},
        "quantization": {"enabled": False},
        "search": {"targets": [0.3], "maxAccuracyDrop": 0.01},
    }
    with pytest.raises(SpecError) as err:
        parse_spec(body)
    assert "search needs pruning.enabled and quantization.enabled" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_budget_nobody_meets_refines_shallower_then_stops() -> None:
    s = search(rounds=3, candidatesPerRound=1)
    done = [measured(0.3, 2.0, 1.5), measured(0.5, 3.0, 2.0), measured(0.7, 5.0, 3.0)]
    # nothing within budget: the next round tries below the shallowest target
    nxt = next_round(s, done)
    assert [(c.target, c.round) for c in nxt] == [(0.15, 1)]
    done.append(measured(0.15, 1.5, 1.2, round_=1))  # still outside: no improvement
    assert next_round(s, done) == []
    assert select(s, done).outcome is SearchOutcome.no_candidate_within_budget
    assert select(s, done).closest == candidate(0.15, 1)
