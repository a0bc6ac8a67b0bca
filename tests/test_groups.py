"""Tests for loop.groups: the target-group tagger on the bundled ToxiGen demonstrations."""

from __future__ import annotations

import pytest

from loop import groups


@pytest.fixture(scope="module")
def tagger() -> groups.Tagger:
    return groups.bundled()


def test_the_bundled_tagger_is_well_above_chance_on_held_out_demonstrations(tagger: groups.Tagger):
    assert tagger.held_out >= 100
    assert tagger.held_out_accuracy >= 0.7 and tagger.held_out_accuracy > tagger.chance + 0.3
    assert len(tagger.examples) == 14 and groups.NONE in tagger.examples  # 13 groups and `none`
    info = tagger.info()
    assert info["trained_on"] == "data/toxigen/demonstrations.tsv" and info["held_out_accuracy"] > info["chance"]


def test_texts_get_the_group_they_name_and_plain_insults_none(tagger: groups.Tagger):
    got = tagger.tag(["muslims should not be allowed to pray in public", "the chinese are taking our jobs",
                      "you are such an idiot , shut up", ""])
    assert got[:2] == ["muslim", "chinese"] and got[2] == groups.NONE and len(got) == 4
    assert tagger.tag([]) == []


def test_training_needs_two_groups_with_two_examples():
    with pytest.raises(ValueError, match="at least 2 groups"):
        groups.train(["a", "b", "c"], ["x", "x", "y"])
