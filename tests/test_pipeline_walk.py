"""Every pipeline class diffusers exports, built tiny and wrapped: no unsafe text from any string argument reaches
a text encoder.

Each class is built from its ``__init__`` signature: tokenizers are the real CLIP tokenizer (or the offline
T5 one for T5 slots), text encoders are random towers of the annotated transformers class built from a tiny
config (skipped when that gives more than 3 M parameters: multimodal LLMs keep their full vision towers),
schedulers their defaults, and every other model a :class:`StandIn` that answers config reads and stops the
call when run. Per string argument (negative ones aside: documented unchecked) the unguarded pipeline is
called with an unsafe text there; where that text reached a text encoder, the guarded
pipeline is called the same way and must not let it reach one. Measured with diffusers 0.42.1: 293 classes,
187 wrapped, 121 of them route an unsafe text to an encoder through 158 arguments, all stopped; about 10 s.
"""
from __future__ import annotations

import copy
import inspect
import typing
import warnings
from collections import Counter

import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.pipeline import guard_pipeline
from latentguard.pipeline.arguments import classify
from latentguard.pipeline.parts import find_parts

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")

UNSAFE = "a man holding a bloody knife"
TINY = dict(vocab_size=49408, hidden_size=32, d_model=32, intermediate_size=37, d_ff=37, d_kv=8, num_hidden_layers=1,
            num_layers=1, num_attention_heads=4, num_heads=4, num_key_value_heads=2, head_dim=8, projection_dim=32,
            max_position_embeddings=512, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
            bos_token_id=1)
# What the pipelines read from a denoiser's or VAE's config before they encode the prompt.
CONFIG = dict(in_channels=4, out_channels=4, sample_size=32, block_out_channels=[4, 8], latent_channels=4,
              scaling_factor=1.0, shift_factor=0.0, patch_size=1, patch_size_t=1, num_attention_heads=2,
              attention_head_dim=8, joint_attention_dim=32, caption_channels=32, temporal_compression_ratio=1,
              spatial_compression_ratio=8, time_cond_proj_dim=None, addition_time_embed_dim=8, cross_attention_dim=32,
              num_layers=1, guidance_embeds=False, latents_mean=None, latents_std=None, z_dim=4, force_upcast=False,
              scale_factor_temporal=1, scale_factor_spatial=8, encoder_hid_dim_type=None, addition_embed_type=None,
              num_train_timesteps=1000)
KEY_CLASSES = {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline",
               "PixArtAlphaPipeline", "PixArtSigmaPipeline", "StableDiffusionXLImg2ImgPipeline"}


class Stop(Exception):
    """A stand-in model was run: the call got past its text encoders."""


class _Config(dict):
    def __getattr__(self, key):
        if key.startswith("_"):  # _diffusers_version and kin: absent, as in a config built in code
            raise AttributeError(key)
        return CONFIG.get(key, 1)


class StandIn(torch.nn.Module):
    """A denoiser / VAE / ControlNet slot: its config answers what pipelines read first; running it stops the call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(1))
        self.config = _Config(CONFIG)

    dtype = torch.float32
    device = torch.device("cpu")

    def forward(self, *args, **kwargs):
        raise Stop()

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in CONFIG:
                return CONFIG[name]
            raise


def _classes(annotation) -> list[type]:
    if isinstance(annotation, type):
        return [annotation]
    return [c for a in typing.get_args(annotation) for c in _classes(a)]


class Builder:
    """Tiny components per annotated class, built once and shared by every pipeline that names the class."""

    def __init__(self, clip, t5) -> None:
        self.clip, self.t5, self.models = clip, t5, {}

    def text_model(self, cls):
        if cls not in self.models:
            self.models[cls] = None
            try:
                if issubclass(cls, transformers.PreTrainedModel) and "input_ids" in inspect.signature(
                        cls.forward).parameters:
                    config = cls.config_class(**TINY)
                    with torch.device("meta"):
                        size = sum(p.numel() for p in cls(config).parameters())
                    if size <= 3_000_000:
                        torch.manual_seed(0)
                        self.models[cls] = cls(config).eval()
            except Exception:  # an abstract or multimodal class: no tiny build
                pass
        return self.models[cls]

    def component(self, name: str, param, stand_in: bool):
        classes = _classes(param.annotation)
        if "tokenizer" in name or any("Tokenizer" in c.__name__ for c in classes):
            return self.t5 if any("T5" in c.__name__ for c in classes) else self.clip
        for cls in classes:
            if issubclass(cls, transformers.PreTrainedModel) and (model := self.text_model(cls)) is not None:
                return model
            if issubclass(cls, diffusers.SchedulerMixin):
                try:
                    return cls()
                except Exception:
                    continue
        if "scheduler" in name:
            return diffusers.DDIMScheduler()
        if stand_in and any(issubclass(c, diffusers.ModelMixin) for c in classes):
            return StandIn()
        return inspect.Parameter.empty if param.default is not param.empty else None

    def build(self, cls):
        for stand_in in (True, False):  # some pipelines only build with None in a model slot
            kwargs = {}
            for name, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
                if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    value = self.component(name, param, stand_in)
                    if value is not inspect.Parameter.empty:
                        kwargs[name] = value
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return cls(**kwargs)
            except Exception as exc:
                error = exc
        raise error


def _reached(parts, run) -> bool:
    """Whether ``run()`` ran a text encoder on a text containing 'knife'.

    Recorded by a forward pre-hook on each encoder, registered before the guard's (which it puts first),
    so it sees only ids the guard let through.
    """
    rows, handles = [], []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            rows.extend(ids.reshape(-1, ids.shape[-1]).tolist())

    for module in parts.encoders.values():
        handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    try:
        run()
    except (Exception, Stop):
        pass
    finally:
        for handle in handles:
            handle.remove()
    for tokenizer in parts.tokenizers.values():
        for row in rows:
            try:
                if "knife" in tokenizer.decode(row, skip_special_tokens=True):
                    return True
            except Exception:
                continue
    return False


def _exported():
    out = []
    for name in dir(diffusers):
        if "Pipeline" in name:
            try:
                cls = getattr(diffusers, name)
            except Exception:  # an optional backend is missing
                continue
            if inspect.isclass(cls) and issubclass(cls, diffusers.DiffusionPipeline) and cls is not \
                    diffusers.DiffusionPipeline:
                out.append(cls)
    return out


def test_no_unsafe_text_from_any_string_argument_reaches_a_text_encoder(clip_tokenizer, tiny_encoder):
    guard = td.KeywordGuard(tiny_encoder)  # reads any length, so the routes (not the context rule) are tested
    builder = Builder(copy.deepcopy(clip_tokenizer), td.t5_tokenizer())  # some pipelines add tokens to theirs
    classes, skipped, routes, leaks = _exported(), Counter(), [], []
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    for cls in classes:
        try:
            pipe = builder.build(cls)
        except Exception as exc:
            skipped[f"not built tiny ({type(exc).__name__})"] += 1
            continue
        try:
            guarded = guard_pipeline(pipe, guard)
        except LatentGuardError as exc:  # no prompt, or a text encoder we could not build tiny
            skipped["no prompt" if "no 'prompt'" in str(exc) else "no text encoder built tiny"] += 1
            continue
        parts, signature = find_parts(pipe), inspect.signature(pipe.__call__)
        base = {k: v for k, v in dict(height=32, width=32, num_inference_steps=1, num_frames=1, image=image,
                                      mask_image=image, control_image=image, use_resolution_binning=False).items()
                if k in signature.parameters}
        for arg, param in signature.parameters.items():
            if classify(arg) == "negative" or not ("str" in str(param.annotation) or isinstance(param.default, str)):
                continue
            call = {**base, "prompt": "a cat on a sofa", arg: UNSAFE}
            if _reached(parts, lambda: pipe(**call)):
                routes.append((cls.__name__, arg))
                if _reached(parts, lambda: guarded(**call)):
                    leaks.append((cls.__name__, arg))
    routed = {name for name, _ in routes}
    summary = (f"{len(classes)} classes, {len(classes) - sum(skipped.values())} wrapped, {len(routed)} route an "
               f"unsafe text to an encoder through {len(routes)} arguments; skipped: {dict(skipped)}")
    print(summary)  # shown with pytest -s
    assert not leaks, f"unsafe text reached a text encoder through {leaks} ({summary})"
    assert KEY_CLASSES <= routed, summary
    assert len(routed) >= 0.2 * len(classes), summary  # 121 of 293 with diffusers 0.42.1
