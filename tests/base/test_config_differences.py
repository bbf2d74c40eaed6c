"""config_differences: the lines a refused or forced stage prints about what changed."""

from __future__ import annotations

from simdiff.base.provenance import config_differences


def test_changed_added_and_removed_keys_are_named_dotted() -> None:
    old = {"a": {"b": 1, "c": [1, 2]}, "gone": True}
    new = {"a": {"b": 2, "c": [1, 2]}, "new": {"x": "y"}}
    assert config_differences(old, new) == [
        "a.b: 1 -> 2", "gone: True -> (absent)", "new.x: (absent) -> 'y'"]


def test_an_empty_config_has_no_keys_of_its_own() -> None:
    """A record written before a stage had options holds {}: only the new keys are named."""
    assert config_differences({}, {"encode": {"atom_subcells": 2}}) == ["encode.atom_subcells: (absent) -> 2"]
    assert config_differences({"k": 1}, {}) == ["k: 1 -> (absent)"]
    assert config_differences({}, {}) == []
    assert config_differences({"a": {}}, {"a": {"b": 1}}) == ["a: {} -> (absent)", "a.b: (absent) -> 1"]
