"""The embedded corpus: deterministic, varied, a closed vocabulary, and facts that never contradict."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from trainlab.data.corpus import ANIMALS, CAPITALS, COLOR_FACTS, generate_corpus, number_word

SENTENCE_END = re.compile(r'(?<=[.!?"])\s+')


def _sentences(docs: list[str]) -> list[str]:
    return [s for d in docs for s in SENTENCE_END.split(d) if s]


def test_same_seed_same_documents_other_seed_other_documents() -> None:
    assert generate_corpus(200, 7) == generate_corpus(200, 7)
    assert generate_corpus(200, 7) != generate_corpus(200, 8)
    assert generate_corpus(50, 7) == generate_corpus(200, 7)[:50]  # a prefix: n only adds documents


def test_thousands_of_distinct_sentences_from_a_few_hundred_words() -> None:
    docs = generate_corpus(2000, 0)
    assert len(set(_sentences(docs))) > 5000
    words = Counter(w.lower() for d in docs for w in re.findall(r"[A-Za-z]+", d))
    assert 200 < len(words) < 700, len(words)
    # closed vocabulary: most words are frequent enough for a tiny model to learn
    assert sum(1 for c in words.values() if c >= 20) / len(words) > 0.8


def test_mix_of_stories_and_facts() -> None:
    docs = generate_corpus(1000, 1)
    stories = [d for d in docs if re.search(r"\b(went|saw|found|met)\b", d)]
    assert 0.5 < len(stories) / len(docs) < 0.8
    assert all(d and d[0].isupper() and d.rstrip()[-1] in '.!?"' for d in docs)


def test_facts_are_consistent_everywhere() -> None:
    text = " ".join(generate_corpus(3000, 3))
    capitals = re.findall(r"The capital of (\w+) is (\w+)\.", text)
    assert capitals and all(CAPITALS[c] == cap for c, cap in capitals)
    sounds = {a.name: a.sound for a in ANIMALS}
    said = re.findall(r"The (\w+) said (\w+)\.", text)  # animals in stories
    says = re.findall(r"An? (\w+) says (\w+)\.", text)  # animal facts
    assert said and says and all(sounds[a] == s for a, s in said + says)
    colors = dict(COLOR_FACTS)
    for thing, color in re.findall(r"((?:The|A|An) \w+|[A-Z]\w+) is (\w+)\.", text):
        if thing in colors:
            assert colors[thing] == color


def test_story_arithmetic_adds_up() -> None:
    words = {number_word(i): i for i in range(21)}
    text = " ".join(generate_corpus(2000, 4))
    pattern = r"had (\w+) \w+\. \w+ gave \w+ (\w+) more\. Now \w+ had (\w+) \w+\."
    found = re.findall(pattern, text)
    assert found
    for a, b, total in found:
        assert words[a] + words[b] == words[total]
    for a, b, total in re.findall(r"(\w+) plus (\w+) is (\w+)\.", text):
        assert words[a.lower()] + words[b] == words[total]


def test_number_words() -> None:
    assert [number_word(n) for n in (0, 7, 13, 20, 21, 40, 99)] == [
        "zero", "seven", "thirteen", "twenty", "twenty-one", "forty", "ninety-nine"]
    with pytest.raises(ValueError):
        number_word(100)
