"""Text in: the CoPro dataset (prompts, concepts, splits, synonym/adversarial variants) and concept
blacklists read from files. Everything downstream reads its text through this stage."""
from __future__ import annotations

from .blacklist import Blacklist, load_blacklist, load_concepts, validate_concepts
from .copro import CoPro, Triplet, carve_validation, load_copro

__all__ = ["Blacklist", "CoPro", "Triplet", "carve_validation", "validate_concepts", "load_blacklist", "load_concepts",
           "load_copro"]
