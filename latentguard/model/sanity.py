"""What makes mapping-layer weights usable, checked when they are loaded, and which thresholds they can reach.

A logit is ``tempr * cos(v', q')``, so no prompt scores above ``tempr``: a threshold above it flags
nothing, and weights with ``tempr <= 0``, non-finite values, or logits that do not change with the
prompt (all-zero weights, a zeroed head) give every prompt the same verdict, silently. Each of these
is refused in one line rather than read as "safe".
"""
from __future__ import annotations

import math

import torch

from ..errors import LatentGuardError

PROBE_PROMPTS, PROBE_CONCEPTS, PROBE_ROWS = 8, 4, 78  # a seeded random probe: cheap (8 x 4 pairs per scale)
PROBE_SCALES = (1.0, 10.0, 100.0)


def max_logit(model) -> float:
    """The largest logit the weights can give: ``tempr`` (cos <= 1)."""
    return float(model.tempr.detach())


def validate_weights(model, where: str = "the mapping layer") -> None:
    """Refuse weights that cannot separate anything: non-finite values, ``tempr <= 0``, or logits that
    stay the same whatever the prompt, on a seeded random probe at several scales."""
    for name, tensor in model.state_dict().items():
        if not bool(torch.isfinite(tensor).all()):
            raise LatentGuardError(f"{where}: {name} is not finite (it holds NaN or inf); the checkpoint is damaged "
                                   "or was saved from a diverged run")
    tempr = max_logit(model)
    if not tempr > 0:
        raise LatentGuardError(f"{where}: tempr is {tempr:g}; logits are tempr x cos, so with tempr <= 0 no threshold "
                               "separates unsafe prompts from safe ones (a damaged or untrained checkpoint)")
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    spread = 0.0
    with torch.inference_mode():
        for scale in PROBE_SCALES:  # hidden states come at many scales; a working layer varies at one of them
            prompts = scale * torch.randn(PROBE_PROMPTS, PROBE_ROWS, model.in_dim, generator=generator)
            concepts = scale * torch.randn(PROBE_CONCEPTS, model.in_dim, generator=generator)
            logits = model.logit_matrix(prompts.to(param), concepts.to(param)).double().cpu()
            spread = max(spread, float((logits.amax(0) - logits.amin(0)).max()))  # a concept's logit across prompts
    if not math.isfinite(spread) or spread <= 1e-6 * tempr:
        raise LatentGuardError(f"{where}: gives every prompt the same logit (all-zero, zeroed-head or damaged "
                               "weights), so every prompt would get the same verdict; it cannot judge anything")


def validate_reachable(threshold: float, model, what: str = "threshold") -> float:
    """Refuse a threshold that decides without looking: at or above every logit these weights can give (it would
    flag nothing) or at or below every one (it would flag everything); a logit is ``tempr x cos``."""
    top = max_logit(model)
    if threshold >= top:  # at it, only a cosine of exactly 1 is flagged: nothing a prompt reaches (a fortieth pass)
        raise LatentGuardError(f"{what} {threshold:g} is {'above' if threshold > top else 'at'} the largest logit "
                               f"these weights can give ({top:.4g} = "
                               "tempr, since a logit is tempr x cos), so no prompt would ever be flagged; calibrate "
                               "(--calibrate-safe, guard.calibrate) or choose a lower threshold")
    if threshold <= -top:
        raise LatentGuardError(f"{what} {threshold:g} is at or below the smallest logit these weights can give "
                               f"({-top:.4g} = -tempr), so every prompt would be flagged whatever it says; calibrate "
                               "(--calibrate-safe, guard.calibrate) or choose a higher threshold")
    return threshold
