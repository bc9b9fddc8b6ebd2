"""Constants every layer shares, defined once (torch-free, so light modules can import them).

Published numbers, addresses and checksums live in :mod:`latentguard.published`; this module holds
the released code's fixed choices (the encoder, the 78-row embedding layout and its version) and the
names of the choices a config can make.
"""
from __future__ import annotations

DEFAULT_ENCODER = "openai/clip-vit-large-patch14"  # the released text encoder (CLIP ViT-L/14)
DEFAULT_CHECKPOINT = "model_parameters.pth"       # the released weights' file name (training: the final weights)
BEST_CHECKPOINT = "best.pth"                       # training's best-on-validation weights (opt-in: train.keep_best)
CONTEXT_LENGTH = 77                                # tokens per encoder pass
EMBEDDING_ROWS = CONTEXT_LENGTH + 1                # pooled (first end-of-text) state + 77 token states
# Version of the embedding layout (rows, pooling, padding, windows). Bump it whenever the rows an
# encoder writes for a text change: store hints recorded under another version are then ignored.
LAYOUT_VERSION = 1
# Long-prompt windows advance by this many content tokens; with 75 content tokens per 77-token
# window, neighbours overlap by 25 tokens, so any phrase of up to 25 tokens is seen whole somewhere.
DEFAULT_WINDOW_STRIDE = 50
# The encoder families: name -> the class that implements it (``module:Class`` under latentguard.encoders).
# This is a family's one registration: load_encoder (which asks the families in this order which one a
# name is), the config's encoder.type, the bundle format and bundle writing all read it. Keep "hf" last:
# it takes any Hugging Face model no family before it claims.
ENCODER_FAMILIES = {
    "clip": "clip:CLIPTextEncoder",
    "openclip": "openclip:OpenCLIPTextEncoder",
    "hf": "hf:HFTextEncoder",
}
ENCODER_TYPES = ("auto", *ENCODER_FAMILIES)
ENCODER_DTYPES = ("float32", "float16", "bfloat16")  # compute dtype of the encoder (float16: GPU only)
STORE_DTYPES = ("float16", "float32")                 # on-disk precision of the embedding store
PRECISIONS = ("exact", "fast")                        # encoder precision profiles (latentguard.encoders.precision)
BLACKLIST_MATCHES = ("substring", "word")  # Text Blacklist rules: the paper's (case-insensitive substring) first
DEFAULT_CATEGORY = "unsafe"  # the category of a flat blacklist's concepts (config: inference.category)
# Threshold names besides the published ones (latentguard.published.NAMED_THRESHOLDS):
CALIBRATED = "calibrated"  # the calibration record beside the checkpoint; an error when there is none
AUTO = "auto"              # that record when there is one, else 9.0131 for the released weights only
RUN_LOCK = ".latentguard-run.lock"       # a run directory's lock: one run at a time (latentguard.cli.rundir)
RUN_OUTPUTS_RECORD = ".latentguard-outputs.json"  # which command's run a directory holds, and what it wrote
# The longest prompt a guard reads (characters): a longer one is refused, as text it cannot judge. Its windows cost
# about 10 KB of memory per token, so one 400 KB row had held `latentguard score` for 234 s and 3.1 GB (a 6 MB row:
# about 30 GB; a forty-third hostile pass). The server's --max-chars may not exceed it.
MAX_PROMPT_CHARS = 10_000
