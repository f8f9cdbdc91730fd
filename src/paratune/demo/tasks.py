"""Small tasks the project generates itself, so the demo needs no downloaded data."""

from __future__ import annotations

import random
import zlib

_THINGS = ["pasta", "hotel room", "phone", "concert", "movie", "coffee", "laptop", "service", "book", "flight",
           "pizza", "headphones", "museum", "bakery", "game", "jacket", "train ride", "garden", "show", "soup"]
_GOOD = ["wonderful", "excellent", "delightful", "fantastic", "great", "lovely", "superb", "amazing", "charming",
         "brilliant"]
_BAD = ["terrible", "awful", "disappointing", "horrible", "dreadful", "boring", "broken", "poor", "dirty",
        "useless"]
_FRAMES = ["The {thing} was {adj}.", "Honestly, the {thing} felt {adj}.", "I found the {thing} {adj}.",
           "What a {adj} {thing}!", "Our {thing} turned out {adj}."]


def sentiment_records(n: int, seed: int, held_out: bool = False) -> list[dict]:
    """Review sentences labelled ``positive``/``negative`` in prompt-completion format.

    Training and held-out sets use disjoint (thing, adjective) pairs, so the held-out set is unseen.
    """
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        label = rng.choice(["positive", "negative"])
        thing = rng.choice(_THINGS)
        adj = rng.choice(_GOOD if label == "positive" else _BAD)
        if (zlib.crc32(f"{thing}|{adj}".encode()) % 5 == 0) != held_out:  # stable 20% / 80% split of the pairs
            continue
        sentence = rng.choice(_FRAMES).format(thing=thing, adj=adj)
        records.append({"prompt": f"Classify the sentiment of this review as positive or negative.\n\n{sentence}",
                        "completion": label})
    return records
