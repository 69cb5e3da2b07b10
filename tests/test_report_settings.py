"""The report's table of settings that differ between runs (services.report_settings)."""

from __future__ import annotations

from services.report_settings import differing_settings, flatten, settings_rows, with_defaults


def test_flatten_uses_dotted_fields_and_keeps_lists_and_empty_sections_as_values() -> None:
    config = {"train_actor": {"beta": 0.1, "lora": {"r": 8}}, "stages": ["sample", "judge"], "data": {}}
    assert flatten(config) == {
        "train_actor.beta": 0.1,
        "train_actor.lora.r": 8,
        "stages": ["sample", "judge"],
        "data": {},
    }


def test_only_fields_that_differ_are_columns_and_the_name_is_never_one() -> None:
    base = {"name": "exp-tune", "seed": 0, "train_actor": {"learning_rate": 5e-6, "epochs": 2, "beta": 0.1}}
    lr = base | {"train_actor": base["train_actor"] | {"learning_rate": 2e-5}}
    beta = base | {"name": "other", "train_actor": base["train_actor"] | {"beta": 0.5}}
    assert differing_settings([base, lr, beta]) == ["train_actor.beta", "train_actor.learning_rate"]
    header, rows = settings_rows(["base", "lr", "beta"], [base, lr, beta])
    assert header == ["run", "train_actor.beta", "train_actor.learning_rate"]
    assert rows == [["base", "0.1", "5e-06"], ["lr", "0.1", "2e-05"], ["beta", "0.5", "5e-06"]]


def test_a_field_one_run_lacks_differs_and_is_shown_absent() -> None:
    verifier = {"stages": ["sample", "judge", "refine"], "data": {"pairs_from": "refinement"}}
    samples = {"stages": ["sample", "judge"], "data": {"pairs_from": "samples"}, "search": {"guard": {}}}
    header, rows = settings_rows(["v", "s"], [verifier, samples])
    assert header == ["run", "data.pairs_from", "search.guard", "stages"]
    assert rows[0] == ["v", "refinement", "(absent)", '["sample", "judge", "refine"]']
    assert rows[1] == ["s", "samples", "{}", '["sample", "judge"]']


def test_identical_configs_give_no_setting_columns() -> None:
    header, rows = settings_rows(["a", "b"], [{"name": "a", "seed": 1}, {"name": "b", "seed": 1}])
    assert header == ["run"] and rows == [["a"], ["b"]]


def test_a_field_added_after_a_run_was_made_counts_at_its_default() -> None:
    """A run recorded before ``train_actor.save_minutes`` existed ran as its default says: no
    difference from a run that records the default; a run that set another value differs."""
    old = {"prompts": "p.jsonl", "actor": {"model": "m"}, "refiner": {"model": "m"}}
    new = old | {"train_actor": {"save_minutes": 15.0}}
    other = old | {"train_actor": {"save_minutes": 5.0}}
    assert differing_settings([with_defaults(old), with_defaults(new)]) == []
    assert differing_settings([with_defaults(old), with_defaults(other)]) == ["train_actor.save_minutes"]
    assert with_defaults({"not": "a config"}) == {"not": "a config"}  # compared as recorded
