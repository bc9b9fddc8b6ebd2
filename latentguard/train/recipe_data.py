"""The open recipe's training examples: what is read, labelled, left out and augmented, decided once.

Four pools, each a list of texts, built from the files :mod:`latentguard.data.open_data` reads:

* ``triplets``: CoPro (unsafe, safe, concept) triplets of the splits the recipe names (``valid``; the
  ``test`` split is CoPro's published test set and is refused here) for the paper's contrastive loss;
* ``unsafe``: CoPro and CoProV2 unsafe prompts, each with its category when known (CoProV2);
* ``benign``: their safe twins (which differ where the concept is: hard negatives) and COCO captions;
* style variants: a seeded share of every pool gets the modifiers real users append to art prompts
  ("trending on artstation", an artist's name), on unsafe and benign prompts alike, so that style
  carries no label. Real users' benign prompts look like that and COCO captions do not: without the
  variants a guard may learn "artistic" as "unsafe".
* short prompts (``recipe.short_prompts``): every training prompt is a sentence, so a guard trained on
  them alone judges two-word prompts erratically ("naked woman" flagged, "naked woman 23" not). The
  concepts themselves ("naked woman", "a naked woman") are added as unsafe prompts, and the first two
  to five words of as many captions as benign ones, so that shortness carries no label either;
* harmless tails (``recipe.noise_augment``): a seeded share of every pool, short prompts included, gets
  a tail that changes nothing about what is drawn (a number, "8k", "hd", "and" + a caption's head, or
  one or two words of the encoder's vocabulary that no unsafe prompt uses), on both labels, so that
  appending one cannot move a prompt across the threshold either way.

``exclude_categories`` removes a category from everything the guard trains on (its CoProV2 pairs,
and the CoPro triplets whose concept is one of that category's blacklist concepts or names the
category), which is how docs/recipe.md measures adding a category at run time.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..data.open_data import CoProTriplet, load_captions, load_copro_triplets, load_coprov2_pairs, validate_known_file
from ..errors import LatentGuardError

# Modifiers users append to text-to-image prompts (common Lexica / DiffusionDB phrasing). Used only to
# make style label-neutral in training; none of them is a concept.
STYLE_MODIFIERS = (
    "trending on artstation", "highly detailed", "digital painting", "concept art", "sharp focus",
    "illustration", "8k", "octane render", "unreal engine", "cinematic lighting", "matte painting",
    "art by greg rutkowski", "by artgerm", "by alphonse mucha", "by wlop", "studio ghibli style",
    "hyperrealistic", "volumetric lighting", "intricate", "elegant", "smooth", "4k uhd", "photorealistic",
    "oil on canvas", "by james jean", "by ross tran", "dramatic lighting", "award winning photograph",
    "fantasy art", "dslr photo", "bokeh", "golden hour", "portrait", "detailed face", "symmetrical",
    "by makoto shinkai", "by beeple", "pixar style", "anime key visual", "watercolor",
)


@dataclass
class RecipeExamples:
    """Everything one recipe run trains on; texts are distinct within each pool."""

    triplets: list[CoProTriplet]
    unsafe: list[str]
    unsafe_category: list[str | None]
    benign: list[str]
    held_out_benign: list[str]  # captions kept out of training, for calibrating the threshold
    sources: dict[str, str] = field(default_factory=dict)  # file -> SHA-256

    def texts(self) -> list[str]:
        """Every text that needs an embedding (for the store), in a stable order."""
        seen: dict[str, None] = {}
        for t in self.triplets:
            seen.setdefault(t.unsafe, None)
            seen.setdefault(t.safe, None)
        for text in (*self.unsafe, *self.benign, *self.held_out_benign):
            seen.setdefault(text, None)
        return list(seen)

    def without(self, texts: set[str]) -> "RecipeExamples":
        """These examples less every triplet, prompt and caption among ``texts`` (those the encoder cannot read)."""
        keep = [i for i, t in enumerate(self.unsafe) if t not in texts]
        return RecipeExamples([t for t in self.triplets if t.unsafe not in texts and t.safe not in texts],
                              [self.unsafe[i] for i in keep], [self.unsafe_category[i] for i in keep],
                              [t for t in self.benign if t not in texts],
                              [t for t in self.held_out_benign if t not in texts], dict(self.sources))

    def summary(self) -> str:
        return (f"{len(self.triplets)} CoPro triplets, {len(self.unsafe)} unsafe and {len(self.benign)} benign "
                f"prompts ({len(self.held_out_benign)} benign held out for the threshold)")


def with_style(text: str, rng: random.Random) -> str:
    """``text`` with 2-6 art-prompt modifiers appended, as users write them."""
    picks = rng.sample(STYLE_MODIFIERS, rng.randint(2, 6))
    return text.rstrip(" .") + ", " + ", ".join(picks)


# Tails that change nothing about what an image shows; "{caption}" is a caption's head ("a cat on a sofa").
# "{word}" is a word of the encoder's vocabulary that no unsafe training prompt uses: a word the unsafe data
# never shows carries no label, however rare it is in the benign data.
NOISE_TAILS = ("{n}", "{n}", "#{n}", "v{n}", "{year}", "8k", "4k", "hd", "uhd", "1080p", "hq", "jpg", "png",
               "and {caption}", "with {caption}", "next to {caption}", "{caption}", "{word}", "{word}",
               "{word} {word}", "{word}, {word}")


def with_tail(text: str, rng: random.Random, heads: Sequence[str], words: Sequence[str] = ()) -> str:
    """``text`` with one harmless tail (:data:`NOISE_TAILS`), joined by a space or a comma."""
    tails = NOISE_TAILS if words else tuple(t for t in NOISE_TAILS if "{word}" not in t)
    tail = rng.choice(tails)
    while "{word}" in tail:
        tail = tail.replace("{word}", rng.choice(words), 1)
    tail = tail.format(n=rng.randint(0, 99), year=rng.randint(1950, 2030),
                       caption=rng.choice(heads) if heads else "a chair")
    return text.rstrip(" .") + rng.choice((" ", ", ")) + tail


_WORD = re.compile(r"[a-z]+")


def caption_head(caption: str, rng: random.Random) -> str:
    """The first two to five words of a caption, lower-cased ("a man holding a baby")."""
    words = caption.strip().rstrip(".").split()
    return " ".join(words[: rng.randint(2, 5)]).lower()


def concept_prompts(concepts: Sequence[str], rng: random.Random) -> list[str]:
    """Each concept as a prompt, as written and with an article ("naked woman", "a naked woman")."""
    out = []
    for c in concepts:
        out.append(c)
        if not c.lower().startswith(("a ", "an ", "the ")):
            out.append(("an " if c[:1].lower() in "aeiou" else "a ") + c)
    return out


def _excluded(concept: str, excluded: set[str], category_concepts: dict[str, list[str]]) -> bool:
    text = concept.lower()
    for category in excluded:
        words = [category.replace("-", " "), category, *category_concepts.get(category, [])]
        if any(w.lower() in text or text in w.lower() for w in words):
            return True
    return False


def build_examples(recipe, category_concepts: dict[str, list[str]], seed: int,
                   vocabulary: Sequence[str] = ()) -> RecipeExamples:
    """The examples a recipe config (``cfg.recipe``) names, seeded; refuses evaluation splits. ``vocabulary``:
    the encoder's words, from which harmless tails draw the words no unsafe prompt uses."""
    if "test" in recipe.copro_splits:
        raise LatentGuardError("recipe.copro_splits must not include 'test': it is CoPro's published test set, "
                               "for evaluation only")
    rng = random.Random(seed)
    excluded = set(recipe.exclude_categories)
    unknown = excluded - set(category_concepts) - {"self-harm", "sexual", "violence", "shocking", "hate",
                                                    "harassment", "illegal-activity"}
    if unknown:
        raise LatentGuardError(f"recipe.exclude_categories: unknown category {sorted(unknown)[0]!r}")
    sources: dict[str, str] = {}
    triplets: list[CoProTriplet] = []
    unsafe: dict[str, str | None] = {}
    benign: dict[str, None] = {}
    unsafe_of: dict[str, str] = {}  # every unsafe prompt read (excluded ones too) -> its config key
    if recipe.copro:
        sources[str(recipe.copro)] = validate_known_file(recipe.copro)
        for t in load_copro_triplets(recipe.copro, recipe.copro_splits):
            unsafe_of.setdefault(_same(t.unsafe), "recipe.copro")
            if _excluded(t.concept, excluded, category_concepts):
                continue
            triplets.append(t)
            unsafe.setdefault(t.unsafe, None)
            benign.setdefault(t.safe, None)
    if recipe.coprov2:
        sources[str(recipe.coprov2)] = validate_known_file(recipe.coprov2)
        for pair in load_coprov2_pairs(recipe.coprov2):
            unsafe_of.setdefault(_same(pair.unsafe), "recipe.coprov2")
            if pair.category in excluded:
                continue
            unsafe[pair.unsafe] = pair.category
            if recipe.coprov2_safe:
                benign.setdefault(pair.safe, None)
    held_out: list[str] = []
    trained_captions: list[str] = []
    if recipe.captions:
        sources[str(recipe.captions)] = validate_known_file(recipe.captions)
        captions = load_captions(recipe.captions).captions
        _refuse_unsafe_captions(recipe, captions, unsafe_of)
        rng.shuffle(captions)
        n_cal = min(recipe.calibration_captions, len(captions) // 5)
        held_out = captions[:n_cal]
        trained_captions = captions[n_cal : n_cal + recipe.max_captions]
        for c in trained_captions:
            benign.setdefault(c, None)
    if not unsafe or not benign:
        raise LatentGuardError("the recipe needs unsafe and benign prompts: set recipe.copro and/or recipe.coprov2, "
                               "and recipe.captions or recipe.coprov2_safe")
    for text in list(benign):  # a text labelled both ways (a few CoPro rows) is not a benign example
        if text in unsafe:
            del benign[text]
    unsafe_texts, unsafe_cat = list(unsafe), list(unsafe.values())
    benign_texts = list(benign)
    if recipe.style_augment > 0:
        for texts, cats in ((unsafe_texts, unsafe_cat), (benign_texts, None)):
            picked = rng.sample(range(len(texts)), int(len(texts) * recipe.style_augment))
            for i in sorted(picked):
                texts.append(with_style(texts[i], rng))
                if cats is not None:
                    cats.append(cats[i])
        held_out = held_out + [with_style(c, rng) for c in held_out[: len(held_out) // 2]]
    if recipe.short_prompts or recipe.noise_augment > 0:
        _add_short_and_tails(recipe, rng, category_concepts, excluded, triplets, trained_captions,
                             unsafe_texts, unsafe_cat, benign_texts, vocabulary)
    return RecipeExamples(triplets, unsafe_texts, unsafe_cat, benign_texts, held_out, sources)


def _same(text: str) -> str:
    """``text`` as compared across files: case and runs of spaces do not make an unsafe prompt a caption."""
    return " ".join(text.split()).casefold()


def _refuse_unsafe_captions(recipe, captions: list[str], unsafe_of: dict[str, str]) -> None:
    """Refuse captions that are unsafe prompts of the recipe's own sources: calibrated on (or trained) as benign,
    they teach the guard to pass them and raise its threshold."""
    clash = [c for c in captions if _same(c) in unsafe_of]
    if clash:
        key = unsafe_of[_same(clash[0])]
        n = len(clash)
        raise LatentGuardError(f"{recipe.captions}: {n} caption{'s are' if n > 1 else ' is an'} unsafe "
                               f"prompt{'s' if n > 1 else ''} of {key} ({getattr(recipe, key.split('.')[1])}), e.g. "
                               f"{clash[0][:60]!r}; recipe.captions must hold benign captions only: remove those rows")


def _add_short_and_tails(recipe, rng: random.Random, category_concepts: dict[str, list[str]], excluded: set[str],
                         triplets: list[CoProTriplet], captions: list[str], unsafe_texts: list[str],
                         unsafe_cat: list[str | None], benign_texts: list[str], vocabulary: Sequence[str]) -> None:
    """Short prompts and harmless tails (see the module docstring), appended to the pools in place."""
    heads = [caption_head(c, rng) for c in captions]  # trained captions only, never the calibration ones
    if recipe.short_prompts:
        seen_u, seen_b = set(unsafe_texts), set(benign_texts)
        owner = {c: cat for cat, members in category_concepts.items() if cat not in excluded for c in members}
        copro = sorted({t.concept for t in triplets})
        for concept in [*owner, *[c for c in copro if c not in owner]]:
            for text in concept_prompts([concept], rng):
                if text not in seen_u:
                    seen_u.add(text)
                    unsafe_texts.append(text)
                    unsafe_cat.append(owner.get(concept))
        wanted = sum(1 for t in unsafe_texts if len(t.split()) <= 5)  # as many short benign as short unsafe
        for head in heads:
            if wanted <= 0:
                break
            if head not in seen_b and head not in seen_u:
                seen_b.add(head)
                benign_texts.append(head)
                wanted -= 1
    if recipe.noise_augment > 0:
        used = {w for t in unsafe_texts for w in _WORD.findall(t.lower())}
        words = sorted({w for w in vocabulary if len(w) >= 3 and w.isascii() and w.isalpha()} - used)
        for texts, cats in ((unsafe_texts, unsafe_cat), (benign_texts, None)):
            picked = rng.sample(range(len(texts)), int(len(texts) * recipe.noise_augment))
            for i in sorted(picked):
                texts.append(with_tail(texts[i], rng, heads, words))
                if cats is not None:
                    cats.append(cats[i])


def category_of(concepts: Sequence[str], categories: dict[str, list[str]]) -> list[str]:
    """The category of each concept of a grouped blacklist."""
    owner = {c: name for name, members in categories.items() for c in members}
    return [owner[c] for c in concepts]
