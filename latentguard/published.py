"""What Latent Guard's paper and release publish (Liu et al., ECCV 2024), kept in one place.

The paper's figures (reports print ours beside them), its two named thresholds, and the addresses
and checksums of the released weights and CoPro file. Keys:
``PUBLISHED_TABLE1[method][metric][domain][kind]`` with ``domain`` in ``ID``/``OOD`` and ``kind`` in
``explicit``/``synonym``/``adversarial``; a metric the paper does not report for a method is absent
(not ``None``), e.g. AUC for Text Blacklist and LLM.
"""
from __future__ import annotations

DOMAINS: tuple[str, ...] = ("ID", "OOD")                          # blacklist and test data of each
KINDS: tuple[str, ...] = ("explicit", "synonym", "adversarial")  # how the unsafe prompt names the concept


def _six(values: tuple[float, float, float, float, float, float]) -> dict[str, dict[str, float]]:
    """Map the paper's row order (ID exp/syn/adv, OOD exp/syn/adv) to nested keys."""
    return {
        "ID": dict(zip(KINDS, values[:3])),
        "OOD": dict(zip(KINDS, values[3:])),
    }


# Table 1 (CoPro test sets; C_check = the split's own concepts).
PUBLISHED_TABLE1: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "text_blacklist": {"accuracy": _six((0.805, 0.549, 0.587, 0.895, 0.482, 0.494))},
    "clipscore": {
        "accuracy": _six((0.628, 0.557, 0.504, 0.672, 0.572, 0.533)),
        "auc": _six((0.697, 0.587, 0.504, 0.733, 0.596, 0.560)),
    },
    "bertscore": {
        "accuracy": _six((0.632, 0.549, 0.509, 0.739, 0.594, 0.512)),
        "auc": _six((0.783, 0.591, 0.481, 0.832, 0.622, 0.556)),
    },
    "llm": {"accuracy": _six((0.747, 0.764, 0.867, 0.746, 0.757, 0.862))},
    "latent_guard": {
        "accuracy": _six((0.868, 0.828, 0.829, 0.867, 0.824, 0.819)),
        "auc": _six((0.985, 0.914, 0.908, 0.944, 0.913, 0.915)),
    },
}

# Human-readable method names for tables.
METHOD_NAMES: dict[str, str] = {
    "text_blacklist": "Text Blacklist",
    "clipscore": "CLIPScore",
    "bertscore": "BERTScore",
    "llm": "LLM (no blacklist)",
    "latent_guard": "Latent Guard",
}

# Table 2 (unseen data sets, C_check = ID concepts), Latent Guard only.
PUBLISHED_TABLE2: dict[str, dict[str, float]] = {
    "unsafe_diffusion": {"accuracy": 0.794, "auc": 0.873},
    "i2p++": {"accuracy": 0.701, "auc": 0.749},
}

# Ablations (AUC only), same layout as Table 1.
PUBLISHED_ABLATIONS: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "no_safe_negatives": {"auc": _six((0.922, 0.607, 0.587, 0.813, 0.611, 0.617))},
    "mlp_instead_of_cross_attention": {"auc": _six((0.975, 0.908, 0.818, 0.947, 0.896, 0.866))},
}

# The released inference threshold and the single threshold that reproduces Table 1(a) accuracies,
# and the names a user gives them (--threshold released|paper).
RELEASED_THRESHOLD: float = 9.0131
TABLE1_ACCURACY_THRESHOLD: float = 4.47
RELEASED = "released"
PAPER = "paper"
NAMED_THRESHOLDS: dict[str, float] = {RELEASED: RELEASED_THRESHOLD, PAPER: TABLE1_ACCURACY_THRESHOLD}

# The released files: where they are and how to check them.
RELEASED_CHECKPOINT_URL = "https://github.com/rt219/LatentGuard/raw/main/model_parameters.pth"
RELEASED_CHECKPOINT_SHA256 = "02315494f35e819dc627ba858408d571e06a594590e8bd4026ba63f0922da231"
RELEASED_CHECKPOINT_GIT_BLOB = "0a21262abdf7aa36db8cba927a22cee6857bd24d"  # as the released repository's tree names it
COPRO_URL = "https://raw.githubusercontent.com/rt219/LatentGuard/main/dataset/CoPro_v1.0.json"
COPRO_GIT_BLOB = "e56717a7c4c5b8f5ead376079f8ecee62e29a06c"  # the only checksum published for CoPro v1.0
