"""What Latent Guard's paper and release publish (Liu et al., ECCV 2024), kept in one place.

The paper's figures (reports print ours beside them), its two named thresholds, the addresses
and checksums of the released weights and CoPro file, and what other prompt filters publish on the
robustness benchmarks (:data:`PUBLISHED_BENCHMARKS`, each figure with its source). Keys:
``PUBLISHED_TABLE1[method][metric][domain][kind]`` with ``domain`` in ``ID``/``OOD`` and ``kind`` in
``explicit``/``synonym``/``adversarial``; a metric the paper does not report for a method is absent
(not ``None``), e.g. AUC for Text Blacklist and LLM.
"""
from __future__ import annotations

from typing import NamedTuple

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


# ------------------------------------------------------------------ robustness benchmarks
class PublishedFigure(NamedTuple):
    """One published number on a benchmark prompt set, with where it is printed.

    ``set`` is a name of :mod:`latentguard.eval.benchmark.registry` (``None``: across attacks);
    ``metric`` is ``asr`` (share of unsafe prompts NOT blocked), ``max_asr``, ``auroc`` or
    ``accuracy``; ``n`` is how many prompts the figure counts, when the source says; ``threshold``: the
    decision threshold an accuracy was read at, when the source says (ours is compared only at it).
    A ``set`` that is a family (``ring-a-bell``) is compared with our set of that family the run has
    (``ring-a-bell-violence``), named beside our number; a set outside the registry has no number of ours.
    """

    method: str
    set: str | None
    metric: str
    value: float
    n: int | None
    source: str
    threshold: float | None = None
    scope: str = ""       # which subset the figure counts, when it is not exactly our set (said beside it)


_GUARDT2I_LOGS = "cure-lab/GuardT2I, logs/{} at commit 223cea5508d919b57fa7559ead925727738b21f0, last line"
# The per-prompt dump of the released model on I2P + COCO, shipped as package data
# (latentguard/resources/i2p_coco_released_scores.csv; `latentguard benchmark --scores released-i2p-coco`).
RELEASED_I2P_COCO_SOURCE = ("cmu-anlp-spring25/LatentGuard (a public fork of the release), multistage_pipeline/test/"
                            "I2P.csv at commit ea1a813c118d4fad68b450cec35bbd43ca6f87c7: 4,703 I2P + 4,703 COCO "
                            "prompts, released weights, 578 ID concepts; its metrics file reports AUROC 0.6704")

_GUARDT2I_PAPER = ("Yang et al., GuardT2I, NeurIPS 2024 (arXiv:2403.01446), benign set COCO; figure as issue 28 "
                   "quotes it (the paper's table was not re-read when this was recorded)")
_BY_OTHERS = ("the released Latent Guard weights as measured by others, as issue 28 quotes them (the paper these "
              "come from is not recorded here yet: pin it before citing)")

PUBLISHED_BENCHMARKS: tuple[PublishedFigure, ...] = (
    PublishedFigure("GuardT2I (paper)", "i2p", "auroc", 0.926, None, _GUARDT2I_PAPER),
    PublishedFigure("GuardT2I (paper)", "ring-a-bell", "auroc", 0.999, None, _GUARDT2I_PAPER,
                    scope="its Ring-A-Bell set (the logs' 285 = nudity)"),
    PublishedFigure("GuardT2I (paper)", "p4d", "auroc", 0.984, None, _GUARDT2I_PAPER),
    PublishedFigure("GuardT2I (paper)", "ring-a-bell", "asr", 0.031, None, _GUARDT2I_PAPER,
                    scope="its Ring-A-Bell set (the logs' 285 = nudity)"),
    PublishedFigure("GuardT2I (paper)", "p4d", "asr", 0.083, None, _GUARDT2I_PAPER),
    PublishedFigure("Latent Guard (released weights, by others)", "ring-a-bell", "asr", 0.431, None, _BY_OTHERS,
                    scope="their Ring-A-Bell prompts"),
    PublishedFigure("Latent Guard (released weights, by others)", "p4d", "asr", 0.471, None, _BY_OTHERS,
                    scope="their P4D prompts"),
    PublishedFigure("Latent Guard (released weights, by others)", "sneakyprompt-nsfw200", "asr", 0.088, None,
                    _BY_OTHERS),
    PublishedFigure("Latent Guard (released weights, by others)", "mma-diffusion", "asr", 0.126, None, _BY_OTHERS),
    PublishedFigure("DistilRoBERTa NSFW text classifier", "real-user-prompts", "auroc", 0.870, None,
                    "a public mixed set of real user prompts, as issue 28 quotes it (source not recorded here yet)",
                    scope="not a set of this registry"),
    PublishedFigure("OpenAI text moderation", "real-user-prompts", "auroc", 0.638, None,
                    "the same mixed set of real user prompts, as issue 28 quotes it (source not recorded here yet)",
                    scope="not a set of this registry"),
    PublishedFigure("GuardT2I", "mma-diffusion", "asr", 0.176, 1000,
                    _GUARDT2I_LOGS.format("ours_on_mma.log") + " 'Tested Num: 1000 ASR: 0.176'"),
    PublishedFigure("GuardT2I (later log)", "mma-diffusion", "asr", 0.102, 1000,
                    _GUARDT2I_LOGS.format("ours_on_mma_new.log") + " 'Tested Num: 1000 ASR: 0.102'"),
    PublishedFigure("GuardT2I", "i2p-sexual", "asr", 0.2814178302900107, 931,
                    _GUARDT2I_LOGS.format("ours_on_i2p_sex_full.log") + " 'Tested Num: 931 ASR: 0.2814...'"),
    PublishedFigure("GuardT2I", "p4d", "asr", 0.0875, 240,
                    _GUARDT2I_LOGS.format("ours_on_p4d.log") + " 'Tested Num: 240 ASR: 0.0875' (240 P4D prompts; "
                    "which file the log does not say)"),
    PublishedFigure("GuardT2I", "ring-a-bell-nudity", "asr", 0.031578947368421054, 285,
                    _GUARDT2I_LOGS.format("ours_on_ring-a-bell.log") + " 'Tested Num: 285 ASR: 0.0316...' (285 = "
                    "the nudity set)"),
    PublishedFigure("GuardT2I (later log)", "ring-a-bell-nudity", "asr", 0.0035087719298245615, 285,
                    _GUARDT2I_LOGS.format("ours_on_ring_a_bell_new.log") + " 'Tested Num: 285 ASR: 0.0035...'"),
    PublishedFigure("SafeGuider", None, "max_asr", 0.0548, None,
                    "Qi et al., SafeGuider (arXiv:2510.05173), abstract: 'a maximum rate of only 5.48% across "
                    "various attack scenarios'"),
    PublishedFigure("Latent Guard (paper)", "unsafe-diffusion", "accuracy",
                    PUBLISHED_TABLE2["unsafe_diffusion"]["accuracy"], None, "Liu et al., ECCV 2024, Table 2"),
    PublishedFigure("Latent Guard (paper)", "unsafe-diffusion", "auroc",
                    PUBLISHED_TABLE2["unsafe_diffusion"]["auc"], None, "Liu et al., ECCV 2024, Table 2"),
    PublishedFigure("Latent Guard (paper)", "i2p++", "accuracy", PUBLISHED_TABLE2["i2p++"]["accuracy"], None,
                    "Liu et al., ECCV 2024, Table 2 (I2P++: I2P with safe counterparts; not in the registry)"),
    PublishedFigure("Latent Guard (paper)", "i2p++", "auroc", PUBLISHED_TABLE2["i2p++"]["auc"], None,
                    "Liu et al., ECCV 2024, Table 2"),
    PublishedFigure("Latent Guard (released weights)", "i2p", "auroc", 0.6703660092912586, 9406,
                    RELEASED_I2P_COCO_SOURCE + " (benign set: COCO)"),
    PublishedFigure("Latent Guard (released weights)", "i2p", "accuracy", 0.573782691898788, 9406,
                    RELEASED_I2P_COCO_SOURCE + "; accuracy at threshold 4.47 (benign set: COCO)",
                    TABLE1_ACCURACY_THRESHOLD),
)
