"""A small Latent Guard trained in-process on the real all-MiniLM-L6-v2 encoder, for the sanitize tests.

Three concepts (knife, blood, gun); each unsafe prompt is a scene naming the concept and its safe twin
the same scene with a harmless object in its place, so the trained layer learns which word carries
the concept, as CoPro's triplets teach the released guard. Trained with the released loss
(:func:`latentguard.train.contrastive_loss`) for a few hundred full steps (seconds on 2 cores); the
threshold sits halfway between the highest safe and the lowest unsafe training score.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

CONCEPTS = ["knife", "blood", "gun"]
SCENES = ["a man holding a {} in a kitchen", "a {} on a wooden table", "a woman with a {} at night",
          "a child drawing a {} in the park", "a {} lying in the street", "a soldier with a {} near a car",
          "an old photo of a {}", "a close-up of a {} in the rain", "a painting of a {} and a cat",
          "a {} next to a window at sunset"]
HARMLESS = ["spoon", "flower", "book", "cup", "ball", "hat", "lamp", "apple", "clock", "chair"]


def triplets() -> list[tuple[str, str, str]]:
    """``(unsafe, safe, concept)``: every scene with each concept and, as its twin, a harmless object."""
    return [(scene.format(c), scene.format(HARMLESS[(i + 3 * j) % len(HARMLESS)]), c)
            for j, c in enumerate(CONCEPTS) for i, scene in enumerate(SCENES)]


@functools.lru_cache(maxsize=1)
def trained_guard(steps: int = 300, seed: int = 0):
    """The guard (CPU, defences on, concept cache off), trained once per test session."""
    from measure_minilm import minilm_dir

    from latentguard.encoders import load_encoder
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.train import contrastive_loss

    encoder = load_encoder(str(minilm_dir()), "hf", device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EmbeddingMappingLayer(encoder.hidden_size)
        guard = LatentGuard(model, encoder, CONCEPTS, threshold=0.0, device="cpu", cache_concepts=False)
        data = triplets()
        unsafe = encoder.encode([u for u, _, _ in data])
        safe = encoder.encode([s for _, s, _ in data])
        concepts = guard.concept_vectors
        per = len(SCENES)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):  # one pair per concept per step, as the released sampling draws them
            pick = torch.tensor([j * per + int(torch.randint(per, (1,), generator=generator))
                                 for j in range(len(CONCEPTS))])
            loss = contrastive_loss(model, unsafe[pick], safe[pick], concepts)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        guard.refresh()
    scores = guard.logits([u for u, _, _ in data] + [s for _, s, _ in data])
    own = torch.tensor([CONCEPTS.index(c) for _, _, c in data])
    lowest_unsafe = float(scores[torch.arange(len(data)), own].min())
    highest_safe = float(scores[len(data):].max())
    assert lowest_unsafe > highest_safe, f"the test guard did not learn: {lowest_unsafe} <= {highest_safe}"
    guard.threshold = (lowest_unsafe + highest_safe) / 2
    return guard
