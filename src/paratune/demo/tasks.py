"""Small tenant tasks the project generates itself, so the demo needs no downloaded data.

Each task gives prompt-completion records; training and held-out records use disjoint items where the task
allows it, so held-out answers show generalisation rather than recall.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable

_THINGS = ["pasta", "hotel room", "phone", "concert", "movie", "coffee", "laptop", "service", "book", "flight",
           "pizza", "headphones", "museum", "bakery", "game", "jacket", "train ride", "garden", "show", "soup"]
_GOOD = ["wonderful", "excellent", "delightful", "fantastic", "great", "lovely", "superb", "amazing", "charming",
         "brilliant"]
_BAD = ["terrible", "awful", "disappointing", "horrible", "dreadful", "boring", "broken", "poor", "dirty",
        "useless"]
_FRAMES = ["The {thing} was {adj}.", "Honestly, the {thing} felt {adj}.", "I found the {thing} {adj}.",
           "What a {adj} {thing}!", "Our {thing} turned out {adj}."]
_FRENCH = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "cat": "chat",
           "dog": "chien", "house": "maison", "water": "eau", "bread": "pain", "apple": "pomme", "sun": "soleil",
           "moon": "lune", "car": "voiture", "book": "livre", "tree": "arbre"}
_FRENCH_FRAMES = ["Translate to French: {w}", "What is the French word for '{w}'?", "French for {w}?",
                  "Give me '{w}' in French."]


def _held_out(key: str) -> bool:
    return zlib.crc32(key.encode()) % 5 == 0  # a stable 20% of the items


def sentiment(n: int, seed: int, held_out: bool = False) -> list[dict]:
    rng, records = random.Random(seed), []
    while len(records) < n:
        label = rng.choice(["positive", "negative"])
        thing, adj = rng.choice(_THINGS), rng.choice(_GOOD if label == "positive" else _BAD)
        if _held_out(f"{thing}|{adj}") != held_out:
            continue
        sentence = rng.choice(_FRAMES).format(thing=thing, adj=adj)
        records.append({"prompt": f"Classify the sentiment of this review as positive or negative.\n\n{sentence}",
                        "completion": label})
    return records


def arithmetic(n: int, seed: int, held_out: bool = False) -> list[dict]:
    rng, records = random.Random(seed), []
    while len(records) < n:
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        if _held_out(f"{a}+{b}") != held_out:
            continue
        records.append({"prompt": f"What is {a} + {b}? Reply with the number only.", "completion": str(a + b)})
    return records


def french(n: int, seed: int, held_out: bool = False) -> list[dict]:
    """Held-out records reuse the vocabulary with unseen phrasings (a word cannot be guessed unseen)."""
    rng, records = random.Random(seed), []
    frames = _FRENCH_FRAMES[3:] if held_out else _FRENCH_FRAMES[:3]
    while len(records) < n:
        word = rng.choice(sorted(_FRENCH))
        records.append({"prompt": rng.choice(frames).format(w=word), "completion": _FRENCH[word]})
    return records


@dataclass(frozen=True)
class DemoTask:
    name: str
    records: Callable[[int, int, bool], list[dict]]
    description: str


TASKS = {
    "sentiment": DemoTask("sentiment", sentiment, "label a review positive/negative"),
    "arithmetic": DemoTask("arithmetic", arithmetic, "add two numbers, digits only"),
    "french": DemoTask("french", french, "translate a word to French, one word"),
}




def answer_matches(answer: str, gold: str) -> bool:
    """Loose match for chatty base-model answers: the gold answer appears as a word of the reply."""
    words = answer.lower().replace(".", " ").replace(",", " ").replace("'", " ").replace('"', " ").split()
    return gold.lower() in words
