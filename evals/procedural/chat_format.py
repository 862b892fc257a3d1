"""Instructions with verifiable format constraints, answered helpfully from a topic bank (levels 1-3).

Level 1 has one constraint from six (lowercase, uppercase, bullets, ends_with, include_word, json) and a short
prompt; levels 2 and 3 combine 2 and 3 compatible constraints from all thirteen. The split key is the topic
(the held-out split asks about topics train never mentions); the topic recurs at least every 12 words of the
prompt. Every reference answer is checked against its own constraints before it is returned.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from mixlab.evals.procedural._split import MAX_GAP_WORDS, partition
from mixlab.evals.procedural.constraints import check_all, instruction
from mixlab.evals.procedural.topics import TOPICS

LEVELS = (1, 2, 3)
LEVEL1_TYPES = ("lowercase", "uppercase", "bullets", "ends_with", "include_word", "json")
ALL_TYPES = LEVEL1_TYPES + ("starts_with", "forbid_word", "max_words", "min_words", "sentences", "no_commas", "quoted")
TOPIC_POOLS = partition(sorted(TOPICS), "chat-topic")

LEADS = ("Tell me about {t}.", "Describe {t}.", "Write about {t}.", "What do you know about {t}?")
END_PHRASES = ("Hope this helps.", "Any other questions?", "That is all.")
START_PHRASES = ("Sure.", "Here you go:", "Of course.")
_STOP = set("about across after their there these those with from into over very many much some that this have "
            "they them when where which while".split())

# Pairs that cannot both hold (or that the reference composer does not combine).
_INCOMPATIBLE = {
    frozenset(p)
    for p in [
        ("lowercase", "uppercase"), ("max_words", "min_words"), ("bullets", "sentences"), ("bullets", "quoted"),
        ("sentences", "starts_with"), ("sentences", "ends_with"),
        *[("json", other) for other in ("bullets", "sentences", "starts_with", "ends_with", "quoted", "uppercase",
                                        "max_words", "min_words")],
    ]
}

_WORDS = re.compile(r"\w+")


def _content_words(text: str) -> set[str]:
    return {w for w in _WORDS.findall(text) if len(w) >= 4 and w not in _STOP and w not in TOPICS}


def draw(level: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    topic = rng.choice(sorted(TOPICS))
    return f"chat|{topic}", {"topic": topic}


def _pick_types(level: int, rng: random.Random) -> list[str]:
    if level == 1:
        return [rng.choice(LEVEL1_TYPES)]
    chosen: list[str] = []
    while len(chosen) < level:
        kind = rng.choice(ALL_TYPES)
        if kind in chosen or any(frozenset((kind, c)) in _INCOMPATIBLE for c in chosen):
            continue
        chosen.append(kind)
    return chosen


def _params(kind: str, level: int, topic: str, rng: random.Random) -> dict[str, Any]:
    facts = " ".join(TOPICS[topic])
    if kind == "bullets":
        return {"type": kind, "n": rng.randint(2, 3 if level == 1 else 4)}
    if kind == "sentences":
        return {"type": kind, "n": rng.randint(1, 4)}
    if kind == "ends_with":
        return {"type": kind, "phrase": rng.choice(END_PHRASES)}
    if kind == "starts_with":
        return {"type": kind, "phrase": rng.choice(START_PHRASES)}
    if kind == "include_word":
        return {"type": kind, "word": rng.choice(sorted(_content_words(facts)))}
    if kind == "forbid_word":
        others = set().union(*(_content_words(" ".join(f)) for t, f in TOPICS.items() if t != topic))
        return {"type": kind, "word": rng.choice(sorted(others - _content_words(facts) - {"helps", "questions"}))}
    if kind == "max_words":
        return {"type": kind, "n": rng.choice([8, 12, 16, 20])}
    if kind == "min_words":
        return {"type": kind, "n": rng.choice([12, 16, 20])}
    return {"type": kind}


def _prompt(topic: str, lead: str, constraints: list[dict[str, Any]]) -> str:
    parts = [lead.format(t=topic)]
    since_topic = len(_WORDS.findall(parts[0].split(topic, 1)[1]))
    for c in constraints:
        text = instruction(c)
        n_words = len(_WORDS.findall(text))
        # The reminder's own 3 words also count, so insert it while the gap can still take them: then no
        # run of more than MAX_GAP_WORDS words lacks the topic, and every 13-word window is topic-specific.
        if since_topic + n_words + 3 > MAX_GAP_WORDS:
            parts.append(f"Keep it about {topic}.")
            since_topic = 0
        parts.append(text)
        since_topic += n_words
    return " ".join(parts)


def _answer(topic: str, level: int, constraints: list[dict[str, Any]], rng: random.Random) -> str:
    by_type = {c["type"]: c for c in constraints}
    facts = list(TOPICS[topic])
    rng.shuffle(facts)
    if "include_word" in by_type:  # lead with a fact that uses the word
        word = by_type["include_word"]["word"]
        facts.sort(key=lambda f: word not in _WORDS.findall(f))
    if "bullets" in by_type:
        count = by_type["bullets"]["n"]
    elif "sentences" in by_type:
        count = by_type["sentences"]["n"]
    else:
        count = 1 if level == 1 else rng.randint(1, 3)
    if "min_words" in by_type:
        while count < len(facts) and sum(len(f.split()) for f in facts[:count]) < by_type["min_words"]["n"]:
            count += 1
    chosen = facts[:count]
    sep = "\n" if "bullets" in by_type else " "
    if "bullets" in by_type:
        body = "\n".join(f"- {f}" for f in chosen)
    else:
        body = " ".join(f[0].upper() + f[1:] + "." for f in chosen)
    if "starts_with" in by_type:
        body = by_type["starts_with"]["phrase"] + sep + body
    if "ends_with" in by_type:
        body = body + sep + by_type["ends_with"]["phrase"]
    if "json" in by_type:
        body = json.dumps({"answer": body})
    if "quoted" in by_type:
        body = f'"{body}"'
    if "lowercase" in by_type:
        body = body.lower()
    if "uppercase" in by_type:
        body = body.upper()
    return body


def build(level: int, split: str, spec: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """An item, or None when this draw's reference answer cannot satisfy its constraints (caller redraws)."""
    topic = spec["topic"]
    constraints = [_params(kind, level, topic, rng) for kind in _pick_types(level, rng)]
    prompt = _prompt(topic, rng.choice(LEADS), constraints)
    response = _answer(topic, level, constraints, rng)
    if not all(check_all(constraints, response)):
        return None
    return {"prompt": prompt, "response": response, "ground_truth": constraints, "verifier": "format"}


def verify(constraints: list[dict[str, Any]], response: str) -> float:
    """1.0 when every constraint holds (IFEval's strict prompt-level accuracy)."""
    return float(all(check_all(constraints, response or ""))) if constraints else 0.0
