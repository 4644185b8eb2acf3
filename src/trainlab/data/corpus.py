"""A procedurally generated English-like corpus: short stories and factual statements.

Why generate text instead of shipping some? trainlab must train a language model end to end
with no download, on a laptop CPU, in a minute or two. Real English is far too rich for a
~1M-parameter model to show visible progress that fast. This corpus is built to be *learnable*:

* a closed vocabulary of a few hundred words, so the embedding table stays small and every word
  is seen thousands of times;
* repeated sentence structures (a grammar with slots), so the model can learn syntax quickly, and
  enough slot combinations (names x places x objects x colors x ...) that it cannot just memorise:
  thousands of distinct sentences;
* a *fixed world*: the capital of Zorvia is always Meltan, a cow always says moo and has four
  legs, seven plus eight is always fifteen. Stories reuse these facts (the duck a character meets
  says quack), so factual recall is learnable and can be probed after training;
* simple causality and time order inside a story (it rained, so they ran home; Tom had three
  apples, Mia gave him two more, now he had five), which gives the model something to get right
  beyond word statistics.

Everything is driven by a ``random.Random(seed)``: the same ``(n_documents, seed)`` always gives
the same documents, in the same order, on every platform (no set iteration, no ``hash()``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Bump whenever the generated corpus or the task formats change: cached artifacts (the embedded
#: tokenizer, base models trained on the embedded data) are keyed on it and get rebuilt.
DATA_VERSION = "corpus-v1"

# --------------------------------------------------------------------------------------------
# The fixed world. These tables are facts: they never depend on the seed.
# --------------------------------------------------------------------------------------------

GIRLS = ("Mia", "Lily", "Anna", "Zoe", "Ivy", "Emma", "Lucy", "Nora", "Ella", "Rosa", "Maya", "Kate",
         "Sara", "Jane", "Ruby")
BOYS = ("Tom", "Sam", "Ben", "Max", "Leo", "Jack", "Finn", "Noah", "Owen", "Luke", "Adam", "Paul",
        "Hugo", "Eli", "Dan")

PLACES = ("park", "forest", "river", "market", "school", "garden", "beach", "hill", "farm", "library",
          "lake", "village", "castle", "zoo", "shop", "field", "bridge", "station", "pond", "kitchen")
LANDMARKS = ("tree", "bench", "rock", "table", "bush", "fence", "wall", "window", "chair", "bed",
             "door", "bridge", "car")
PREPOSITIONS = ("under", "near", "behind", "next to", "on", "by")

#: (singular, plural)
OBJECTS = (
    ("ball", "balls"), ("kite", "kites"), ("book", "books"), ("cup", "cups"), ("hat", "hats"),
    ("box", "boxes"), ("key", "keys"), ("lamp", "lamps"), ("apple", "apples"), ("toy", "toys"),
    ("shoe", "shoes"), ("coat", "coats"), ("bag", "bags"), ("bell", "bells"), ("drum", "drums"),
    ("map", "maps"), ("ring", "rings"), ("boat", "boats"), ("flower", "flowers"), ("stone", "stones"),
    ("pen", "pens"), ("plate", "plates"), ("sock", "socks"), ("spoon", "spoons"), ("cake", "cakes"),
    ("bike", "bikes"), ("clock", "clocks"), ("basket", "baskets"), ("brush", "brushes"),
    ("shell", "shells"),
)
COLORS = ("red", "blue", "green", "yellow", "white", "black", "brown", "pink", "orange", "purple", "gray")


@dataclass(frozen=True)
class Animal:
    """One animal and its facts; stories use the same facts, so they are consistent everywhere."""

    name: str
    legs: int
    sound: str
    home: str
    food: str
    size: int  # rank for "bigger than" facts; equal ranks are never compared
    moves: str


ANIMALS = (
    Animal("cat", 4, "meow", "in the house", "fish", 5, "run"),
    Animal("dog", 4, "woof", "in the house", "meat", 6, "run"),
    Animal("cow", 4, "moo", "on the farm", "grass", 10, "walk"),
    Animal("horse", 4, "neigh", "on the farm", "hay", 11, "run"),
    Animal("duck", 2, "quack", "in the pond", "seeds", 4, "swim"),
    Animal("hen", 2, "cluck", "on the farm", "seeds", 4, "walk"),
    Animal("sheep", 4, "baa", "in the field", "grass", 8, "walk"),
    Animal("pig", 4, "oink", "on the farm", "corn", 8, "walk"),
    Animal("frog", 4, "croak", "in the pond", "flies", 2, "jump"),
    Animal("bird", 2, "tweet", "in a tree", "seeds", 2, "fly"),
    Animal("owl", 2, "hoot", "in the forest", "mice", 3, "fly"),
    Animal("bee", 6, "buzz", "in a hive", "nectar", 1, "fly"),
    Animal("mouse", 4, "squeak", "in the field", "cheese", 2, "run"),
    Animal("lion", 4, "roar", "in the grassland", "meat", 9, "run"),
    Animal("bear", 4, "growl", "in the forest", "berries", 12, "walk"),
    Animal("fox", 4, "yip", "in the forest", "mice", 5, "run"),
    Animal("goat", 4, "bleat", "on the hill", "grass", 7, "jump"),
    Animal("snake", 0, "hiss", "in the grass", "mice", 3, "slide"),
)

#: Invented countries: (country, capital, description). Fixed facts the model can learn.
COUNTRIES = (
    ("Zorvia", "Meltan", "a small country by the sea"),
    ("Quenland", "Ostra", "a large country with many forests"),
    ("Valmor", "Tirin", "a cold country in the mountains"),
    ("Brenna", "Kalto", "a warm country by the sea"),
    ("Dravia", "Sorn", "a dry country in the desert"),
    ("Elbaria", "Pell", "a green country with many rivers"),
    ("Fennick", "Doru", "a small country in the mountains"),
    ("Gosland", "Varn", "a large country with many lakes"),
    ("Halvia", "Nim", "a cold country by the sea"),
    ("Istovar", "Relk", "a hot country in the desert"),
    ("Jurra", "Bask", "a small country with many farms"),
    ("Korthia", "Ulm", "a large country in the mountains"),
    ("Lutania", "Fesk", "a warm country with many forests"),
    ("Moravel", "Treb", "a green country with many farms"),
    ("Norvin", "Cale", "a quiet country with many lakes"),
    ("Ostrel", "Vinta", "a busy country by the sea"),
)
CAPITALS = {country: capital for country, capital, _ in COUNTRIES}

#: Things whose color is a fact.
COLOR_FACTS = (
    ("The sky", "blue"), ("Grass", "green"), ("Snow", "white"), ("Milk", "white"), ("Coal", "black"),
    ("A banana", "yellow"), ("A lemon", "yellow"), ("A tomato", "red"), ("A carrot", "orange"),
    ("A plum", "purple"), ("A frog", "green"), ("Chocolate", "brown"), ("The sun", "yellow"),
    ("A cherry", "red"), ("A crow", "black"), ("A leaf", "green"), ("A cloud", "white"),
    ("An orange", "orange"), ("A rose", "red"), ("A mouse", "gray"),
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty")

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = ("morning", "afternoon", "evening", "day")
WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "snowy", "cloudy")
TRAITS = ("little", "kind", "brave", "happy", "curious", "shy", "clever", "quiet", "funny")
FOODS = ("bread", "soup", "apples", "cake", "rice", "cheese", "berries", "eggs", "cookies", "pie")
ACTIVITIES = ("played a game", "read a book", "sang a song", "drew a picture", "ran a race",
              "built a sand castle", "flew a kite", "fed the ducks", "picked some flowers",
              "climbed a tree", "looked at the clouds", "played with a ball", "counted the stars",
              "made a card", "danced in the grass")
GLAD = ("happy", "glad", "excited", "proud")
MORALS = ("sharing is good", "friends help each other", "it is good to be kind",
          "you should look carefully", "rain does not last forever", "it is good to ask for help",
          "hard work pays off", "it is fun to try new things")
SEARCH_SPOTS = ("under the bed", "in the garden", "behind the door", "in the kitchen", "near the tree",
                "in the box", "under the table")


def number_word(n: int) -> str:
    """0..99 as English words ("forty-two"); stories and number facts stay within 0..20."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_word supports 0..99, got {n}")
    if n <= 20:
        return NUMBER_WORDS[n]
    tens = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")[n // 10]
    return tens if n % 10 == 0 else f"{tens}-{NUMBER_WORDS[n % 10]}"


def _cap(text: str) -> str:
    """Capitalise the first letter, skipping an opening quote: '"can I..."' -> '"Can I..."'."""
    i = 1 if text.startswith('"') else 0
    return text[:i] + text[i : i + 1].upper() + text[i + 1 :]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------
# Stories
# --------------------------------------------------------------------------------------------


@dataclass
class _Person:
    name: str
    girl: bool

    @property
    def he(self) -> str:
        return "she" if self.girl else "he"

    @property
    def him(self) -> str:
        return "her" if self.girl else "him"

    @property
    def his(self) -> str:
        return "her" if self.girl else "his"


class _Story:
    """A story under construction: the cast and props stay fixed so later sentences refer back.

    Each ``_event_*`` method appends one to three sentences that are consistent with the state
    (an object found earlier is "the red ball" later; counts add up; a sad turn has a reason).
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        girl = rng.random() < 0.5
        self.hero = _Person(rng.choice(GIRLS if girl else BOYS), girl)
        friend_girl = rng.random() < 0.5
        names = [n for n in (GIRLS if friend_girl else BOYS) if n != self.hero.name]
        self.friend = _Person(rng.choice(names), friend_girl)
        self.place = rng.choice(PLACES)
        self.obj, self.objs = rng.choice(OBJECTS)
        self.color = rng.choice(COLORS)
        self.weather = rng.choice(WEATHER)
        self.animal = rng.choice(ANIMALS)
        self.sentences: list[str] = []
        self.have_object = False
        self.met_friend = False

    @property
    def they(self) -> str:
        """Who acts together: "they" once the friend is in the story, else the hero alone."""
        return "they" if self.met_friend else self.hero.he

    def say(self, *sentences: str) -> None:
        self.sentences.extend(_cap(s) for s in sentences)

    # -- openings ---------------------------------------------------------------------------

    def opening(self) -> None:
        h, rng = self.hero, self.rng
        kind = rng.randrange(4)
        if kind == 0:
            self.say(f"one {rng.choice(TIMES)}, {h.name} went to the {self.place}.")
        elif kind == 1:
            self.say(f"once upon a time, there was a {rng.choice(TRAITS)} {'girl' if h.girl else 'boy'} "
                     f"named {h.name}.",
                     f"one day, {h.he} went to the {self.place}.")
        elif kind == 2:
            self.say(f"it was a {self.weather} day, and {h.name} was at the {self.place}.")
        else:
            when = "after school" if rng.random() < 0.4 else f"on {rng.choice(DAYS)}"
            self.say(f"{h.name} and {self.friend.name} went to the {self.place} {when}.")
            self.met_friend = True

    # -- events -----------------------------------------------------------------------------

    def event_find(self) -> None:
        h, rng = self.hero, self.rng
        if self.have_object:  # found earlier (another event needed it): refer back instead
            self.say(f"{h.name} played with the {self.color} {self.obj} for a long time.")
            return
        spot = f"{rng.choice(PREPOSITIONS)} the {rng.choice(LANDMARKS)}"
        self.say(f"{h.he} found {_article(self.color)} {self.color} {self.obj} {spot}.")
        if rng.random() < 0.5:
            self.say(f"{h.name} was {rng.choice(GLAD)} because {h.he} liked {self.color} {self.objs}.")
        self.have_object = True

    def event_animal(self) -> None:
        h, a, rng = self.hero, self.animal, self.rng
        spot = f"{rng.choice(PREPOSITIONS)} the {rng.choice(LANDMARKS)}"
        self.say(f"{h.he} saw {_article(a.name)} {a.name} {spot}.", f"the {a.name} said {a.sound}.")
        follow = rng.randrange(3)
        if follow == 0:
            self.say(f"{h.name} gave the {a.name} some {a.food}, and the {a.name} ate it.")
        elif follow == 1:
            self.say(f"then the {a.name} began to {a.moves} away.")
        else:
            legs = "no legs" if a.legs == 0 else f"{number_word(a.legs)} legs"
            self.say(f"{h.name} saw that the {a.name} had {legs}.")

    def event_meet(self) -> None:
        if self.met_friend:
            self.event_activity()
            return
        h, f = self.hero, self.friend
        self.say(f"there {h.he} met {f.name}.")
        self.met_friend = True

    def event_share(self) -> None:
        h, f = self.hero, self.friend
        if not self.have_object:
            self.event_find()
        self.say(f'"can I play with your {self.obj}?" asked {f.name}.')
        if self.rng.random() < 0.75:
            self.say(f'"yes, you can," said {h.name}.', f"{h.name} gave the {self.obj} to {f.name}.",
                     f"{f.name} was happy because {h.name} shared the {self.color} {self.obj}.")
        else:
            self.say(f'"no," said {h.name}.', f"{f.name} was sad.",
                     f"later, {h.name} said sorry and gave {f.him} the {self.obj}.")
        self.met_friend = True

    def event_count(self) -> None:
        h, f, rng = self.hero, self.friend, self.rng
        obj, objs = rng.choice(OBJECTS)
        n = rng.randint(2, 9)
        if rng.random() < 0.5:
            m = rng.randint(1, 9)
            self.say(f"{h.name} had {number_word(n)} {objs}.",
                     f"{f.name} gave {h.him} {number_word(m)} more.",
                     f"now {h.name} had {number_word(n + m)} {objs}.")
            self.met_friend = True
        else:
            m = rng.randint(1, n - 1)
            left = objs if n - m > 1 else obj
            self.say(f"{h.name} had {number_word(n)} {objs}.",
                     f"{h.he} lost {number_word(m)} of them.",
                     f"now {h.he} had only {number_word(n - m)} {left}.")

    def event_weather(self) -> None:
        h, rng = self.hero, self.rng
        w = self.weather
        if w == "rainy":
            self.say(f"it started to rain, so {self.they} ran home." if rng.random() < 0.5
                     else f"because it was raining, {h.name} opened an umbrella.")
        elif w == "sunny":
            self.say(f"the sun was hot, so {self.they} sat under a tree.")
        elif w == "windy":
            self.say(f"the wind was strong, so {h.name} held {h.his} hat.")
        elif w == "snowy":
            self.say(f"it was snowing, so {h.name} made a snowman.")
        elif w == "cold":
            self.say(f"because it was cold, {h.name} put on {h.his} coat.")
        elif w == "warm":
            self.say(f"it was warm, so {h.name} ate some ice cream.")
        else:
            self.say(f"the sky was gray, but {h.name} did not mind.")

    def event_accident(self) -> None:
        h, f, rng = self.hero, self.friend, self.rng
        if not self.have_object:
            self.event_find()
        kind = rng.randrange(3)
        if kind == 0:
            self.say(f"the {self.obj} fell into the water, so it got wet.",
                     f"{f.name} helped {h.name} dry it.")
        elif kind == 1:
            self.say(f"the {self.obj} fell on the ground, so it got dirty.",
                     f"{h.name} was sad because {h.his} {self.obj} was dirty.",
                     f"then {f.name} helped {h.him} clean it.")
        else:
            spot = rng.choice(SEARCH_SPOTS)
            self.say(f"later, {h.name} lost the {self.obj}.",
                     f"{h.he} looked everywhere.",
                     f"at last, {h.he} found it {spot}.")
        self.met_friend = self.met_friend or kind < 2

    def event_activity(self) -> None:
        rng = self.rng
        acts = rng.sample(ACTIVITIES, 3)
        if rng.random() < 0.5:
            self.say(f"first, {self.they} {acts[0]}.", f"then, {self.they} {acts[1]}.",
                     f"after that, {self.they} {acts[2]}.")
        else:
            self.say(f"{self.they} {acts[0]} and {acts[1]}.")

    def event_eat(self) -> None:
        h, rng = self.hero, self.rng
        food = rng.choice(FOODS)
        self.say(f"{h.name} was hungry, so {h.he} ate some {food}." if rng.random() < 0.5
                 else f"at noon, {self.they} ate {food} at the {self.place}.")

    # -- endings ----------------------------------------------------------------------------

    def ending(self) -> None:
        h, rng = self.hero, self.rng
        kind = rng.randrange(4)
        if kind == 0:
            self.say(f"at the end of the day, {h.name} was tired, and {h.he} went home.")
        elif kind == 1 and self.met_friend:
            self.say(f"{h.name} and {self.friend.name} became good friends.")
        elif kind == 2:
            self.say(f"that night, {h.name} slept well.")
        else:
            self.say(f"{h.name} learned that {rng.choice(MORALS)}.")


_EVENTS = ("event_find", "event_animal", "event_meet", "event_share", "event_count", "event_weather",
           "event_accident", "event_activity", "event_eat")


def generate_story(rng: random.Random) -> str:
    """One short story: an opening, two to four events in time order, an ending."""
    story = _Story(rng)
    story.opening()
    for name in rng.sample(_EVENTS, rng.randint(2, 4)):
        getattr(story, name)()
    story.ending()
    return " ".join(story.sentences)


# --------------------------------------------------------------------------------------------
# Factual statements
# --------------------------------------------------------------------------------------------


def _country_facts(rng: random.Random) -> list[str]:
    country, capital, desc = rng.choice(COUNTRIES)
    facts = [f"The capital of {country} is {capital}.", f"{country} is {desc}."]
    if rng.random() < 0.5:
        facts.append(f"{capital} is the biggest city in {country}.")
    rng.shuffle(facts)
    return facts


def _animal_facts(rng: random.Random) -> list[str]:
    a = rng.choice(ANIMALS)
    art = _cap(_article(a.name))
    legs = "no legs" if a.legs == 0 else f"{number_word(a.legs)} legs"
    facts = [f"{art} {a.name} has {legs}.", f"{art} {a.name} says {a.sound}.",
             f"{art} {a.name} lives {a.home}.", f"{art} {a.name} eats {a.food}.",
             f"{art} {a.name} can {a.moves}."]
    other = rng.choice([b for b in ANIMALS if b.size != a.size])
    relation = "bigger" if a.size > other.size else "smaller"
    facts.append(f"{art} {a.name} is {relation} than {_article(other.name)} {other.name}.")
    return rng.sample(facts, rng.randint(2, 4))


def _color_facts(rng: random.Random) -> list[str]:
    picks = rng.sample(COLOR_FACTS, rng.randint(1, 3))
    return [f"{thing} is {color}." for thing, color in picks]


def _number_facts(rng: random.Random) -> list[str]:
    facts: list[str] = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randint(0, 10), rng.randint(0, 10)
            facts.append(f"{_cap(number_word(a))} plus {number_word(b)} is {number_word(a + b)}.")
        elif kind == 1:
            a, b = rng.sample(range(21), 2)
            word = "more" if a > b else "less"
            facts.append(f"{_cap(number_word(a))} is {word} than {number_word(b)}.")
        elif kind == 2:
            a = rng.randint(1, 19)
            facts.append(f"{_cap(number_word(a + 1))} comes after {number_word(a)}.")
        else:
            a = rng.randint(1, 5)
            b = rng.randint(1, min(9, 20 // a))
            facts.append(f"{_cap(number_word(a))} times {number_word(b)} is {number_word(a * b)}.")
    return facts


_FACT_KINDS = (_country_facts, _animal_facts, _color_facts, _number_facts)


def generate_facts(rng: random.Random) -> str:
    """A short paragraph of true statements about the fixed world, two or three topics mixed."""
    sentences: list[str] = []
    for kind in rng.sample(_FACT_KINDS, rng.randint(2, 3)):
        sentences.extend(kind(rng))
    return " ".join(sentences)


def generate_corpus(n_documents: int, seed: int, *, story_fraction: float = 0.65) -> list[str]:
    """``n_documents`` documents, about ``story_fraction`` stories and the rest fact paragraphs.

    Deterministic: the same arguments give the same list on every run and platform.
    """
    if n_documents < 0:
        raise ValueError(f"n_documents must be >= 0, got {n_documents}")
    rng = random.Random(seed)
    return [generate_story(rng) if rng.random() < story_fraction else generate_facts(rng)
            for _ in range(n_documents)]
