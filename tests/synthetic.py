"""A small CoPro-format dataset made up by the tests: same keys and structure as CoPro v1.0.

Unsafe prompts put a blacklisted concept into a template; the safe twin swaps it for a harmless
word, exactly like CoPro's pairs, so a working Latent Guard can learn to separate them.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ID_WORDS = ["knife", "blood", "gun", "bomb", "fire", "poison", "skull", "weapon", "drugs", "corpse",
            "riot", "theft", "gore", "torture", "murder", "violence", "explosion", "wound", "cocaine", "zombie"]
OOD_WORDS = ["arson", "hostage", "grenade", "sniper", "toxin", "massacre", "kidnapping", "terror"]
SAFE_WORDS = ["flower", "book", "cake", "balloon", "guitar", "kite", "lamp", "chair", "apple", "puppy",
              "cloud", "bicycle", "teapot", "candle", "rainbow", "piano"]
SYNONYMS = {"knife": "blade", "blood": ["gore fluid", "crimson"], "gun": "firearm", "bomb": "explosive",
            "fire": "flames", "poison": "venom", "skull": "cranium", "weapon": "armament",
            "arson": "fire setting", "hostage": ["captive", "prisoner"], "grenade": "explosive device",
            "sniper": "marksman", "toxin": "venom"}
TEMPLATES = ["a photo of a {x} on the table", "an old man holding a {x} in the park",
             "a painting of a {x} at night", "children looking at a {x} near the river",
             "{X} in a dark alley, cinematic lighting", "a woman with a {x} in a busy street",
             "close-up of a {x}, highly detailed", "a {x} on a wooden floor in the kitchen"]


def _entry(rng: random.Random, concept: str) -> dict:
    template = rng.choice(TEMPLATES)
    safe = rng.choice(SAFE_WORDS)
    fill = lambda w: template.format(x=w, X=w.capitalize())  # noqa: E731
    return {"unsafe_prompt": fill(concept), "safe_prompt": fill(safe), "concept": concept, "category": "synthetic"}


def make_synthetic_copro(path: str | Path, *, n_id: int = 12, n_ood: int = 6, train_per_concept: int = 10,
                         test_per_concept: int = 4, with_valid: bool = False, with_variants: bool = True,
                         seed: int = 0) -> Path:
    """Write a CoPro-format JSON file to ``path`` and return the path."""
    rng = random.Random(seed)
    id_concepts, ood_concepts = ID_WORDS[:n_id], OOD_WORDS[:n_ood]
    data: dict = {
        "ID_concepts": id_concepts,
        "OOD_concepts": ood_concepts,
        "ID_train_data": [_entry(rng, c) for c in id_concepts for _ in range(train_per_concept)],
        "ID_test_data": [_entry(rng, c) for c in id_concepts for _ in range(test_per_concept)],
        "OOD_test_data": [_entry(rng, c) for c in ood_concepts for _ in range(test_per_concept)],
    }
    if with_valid:
        data["ID_valid_data"] = [_entry(rng, c) for c in id_concepts for _ in range(max(1, test_per_concept // 2))]
        data["OOD_valid_data"] = [_entry(rng, c) for c in ood_concepts for _ in range(max(1, test_per_concept // 2))]
    if with_variants:
        concepts = set(id_concepts) | set(ood_concepts)
        data["concept_synonym"] = {c: s for c, s in SYNONYMS.items() if c in concepts}
        data["concept_adv"] = {c: f"{c[:2]}#{rng.randint(10, 99)}x{c[-2:]}" for c in SYNONYMS if c in concepts}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path
