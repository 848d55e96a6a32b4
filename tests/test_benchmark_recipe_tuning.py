"""benchmarks/recipe_tuning.py: every trial is a valid change of the en-fr recipe, and a trial
name that does not exist is refused before anything trains."""

import sys
from pathlib import Path

import pytest

from keras_transformer_pipelines.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import recipe_tuning  # noqa: E402


@pytest.mark.parametrize("name", sorted(recipe_tuning.TRIALS))
def test_each_trial_changes_the_recipe_it_names(name):
    base = load_recipe(ROOT / "recipes" / "en-fr.yaml")
    overrides = recipe_tuning.TRIALS[name]
    changed = load_recipe(ROOT / "recipes" / "en-fr.yaml", overrides)
    for key, value in overrides.items():
        section, field = key.split(".")
        assert getattr(getattr(changed, section), field) == value
        assert getattr(getattr(base, section), field) != value, f"{key} is already {value}"


def test_unknown_trial_is_refused(capsys):
    with pytest.raises(SystemExit):
        recipe_tuning.main(["--trials", "baseline,bigger_is_better"])
    assert "unknown trial(s) bigger_is_better" in capsys.readouterr().err


def test_the_ten_minute_recipe_is_the_best_trial():
    """recipes/en-fr-10min.yaml is en-fr.yaml with the winning trial's changes (and a budget)."""
    tuned = load_recipe(ROOT / "recipes" / "en-fr-10min.yaml")
    trial = load_recipe(ROOT / "recipes" / "en-fr.yaml", recipe_tuning.TRIALS["narrow_half_batch"])
    for section in ("data", "tokenizer", "model", "decoding"):
        assert getattr(tuned, section) == getattr(trial, section), section
    for field in ("schedule", "learning_rate", "warmup_steps", "label_smoothing", "clipnorm"):
        assert getattr(tuned.training, field) == getattr(trial.training, field), field
    assert tuned.training.time_budget_s == 600


def test_step_budgets_give_each_trial_its_steps_or_refuse_in_one_line():
    names = ["baseline", "narrow"]
    assert recipe_tuning.step_budgets("1410", names) == {"baseline": 1410, "narrow": 1410}
    assert recipe_tuning.step_budgets("baseline=1410,narrow=5000", names) == {
        "baseline": 1410,
        "narrow": 5000,
    }
    for bad, says in [
        ("baseline=1410", "no step count for narrow"),
        ("baseline=1410,narrow=5000,half_batch=9", "'half_batch', which is not among"),
        ("baseline=0,narrow=5", "whole number of steps >= 1, got '0'"),
        ("ten", "got 'ten'"),
    ]:
        with pytest.raises(ValueError, match=says):
            recipe_tuning.step_budgets(bad, names)
