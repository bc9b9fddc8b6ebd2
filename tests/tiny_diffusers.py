"""Real diffusers pipelines built tiny and offline (as diffusers' own tests do), for the pipeline-guard tests.

Text encoders are random CLIP / T5 towers with the real CLIP tokenizer (``clip_tokenizer``) or a real
``T5TokenizerFast`` whose SentencePiece-style Unigram vocabulary is trained here, in about a second,
on the real CoPro prompts of ``tests/fixtures`` (no T5 tokenizer can be downloaded offline).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from conftest import tiny_clip_text_model

from latentguard.guard import Verdict

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STEPS = dict(num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared CPU OpenMP threads contend: an SD3 call took
    0.07 s on one thread and 0.7-1.3 s on two on a loaded 2-core box. Guarded and unguarded runs compared
    bit for bit both run under it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # diffusers' safety-checker and deprecation notices
    yield
    logging.disable(logging.NOTSET)
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class Runs:
    """Counts forward passes of a module (the pipeline ran it)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------ text towers
def clip_with_projection(seed: int, width: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                            eos_token_id=49407, pad_token_id=49407, projection_dim=32)
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval()


@functools.lru_cache(maxsize=1)
def _t5_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    data = json.loads((FIXTURES / "copro_real_sample.json").read_text(encoding="utf-8"))
    texts = [t for row in data["ID_train_data"] for t in (row["unsafe_prompt"], row["safe_prompt"])]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(33, 127)]
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>", initial_alphabet=alphabet))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return tok


def t5_tokenizer(model_max_length: int = 512):
    """A real ``T5TokenizerFast`` (pad 0, ``</s>`` 1 appended, ``<unk>`` 2) over a vocabulary trained offline."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(tokenizer_object=copy.deepcopy(_t5_tokenizer_object()), eos_token="</s>",
                           pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=model_max_length)


def tiny_t5(width: int = 32, seed: int = 0, vocab: int = 2000):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=width, d_ff=37, d_kv=8, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0)).eval()


# ------------------------------------------------------------------------------ denoisers
def unet(**extra):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**{
        "block_out_channels": (4, 8), "layers_per_block": 1, "sample_size": 32, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32, "norm_num_groups": 2, **extra})


def vae(**extra):
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(**{"block_out_channels": [4, 8], "in_channels": 3, "out_channels": 3,
                                      "latent_channels": 4, "down_block_types": ["DownEncoderBlock2D"] * 2,
                                      "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 2, **extra})


def ddim():
    return diffusers.DDIMScheduler(steps_offset=1, clip_sample=False)


# ------------------------------------------------------------------------------ pipelines
def build_sd(tokenizer, cls=None, **extra):
    cls = cls or diffusers.StableDiffusionPipeline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quiet(cls(vae=vae(), text_encoder=tiny_clip_text_model(hidden_size=32, seed=0), tokenizer=tokenizer,
                         unet=extra.pop("unet", None) or unet(), scheduler=ddim(), safety_checker=None,
                         feature_extractor=None, requires_safety_checker=False))


def build_inpaint(tokenizer):
    return build_sd(tokenizer, diffusers.StableDiffusionInpaintPipeline, unet=unet(in_channels=9))


def build_sdxl(tokenizer, tokenizer_2=None, cls=None):
    # UNet cross_attention_dim = 32 (CLIP-L stand-in) + 32 (CLIP-G stand-in); add. embeds = 6 * 8 + 32 (pooled)
    denoiser = unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                    addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                    projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=1)
    cls = cls or diffusers.StableDiffusionXLPipeline
    return quiet(cls(vae=vae(), text_encoder=tiny_clip_text_model(hidden_size=32, seed=1), tokenizer=tokenizer,
                     text_encoder_2=clip_with_projection(2), tokenizer_2=tokenizer_2 or tokenizer, unet=denoiser,
                     scheduler=ddim()))


def build_refiner(tokenizer_2):
    """SDXL's refiner layout: only the second (CLIP-G) encoder, aesthetic-score time ids (5 values)."""
    denoiser = unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                    addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                    projection_class_embeddings_input_dim=5 * 8 + 32, cross_attention_dim=32, norm_num_groups=1)
    return quiet(diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae(), text_encoder=None, tokenizer=None, text_encoder_2=clip_with_projection(2), tokenizer_2=tokenizer_2,
        unet=denoiser, scheduler=ddim(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False))


def build_sd3(tokenizer, tokenizer_2=None, t5=None):
    """SD3 with two CLIP stand-ins (32 + 32 wide) and, given a T5 tokenizer, a 64-wide T5 (else no T5)."""
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
    return quiet(diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=vae(shift_factor=0.0609, scaling_factor=1.5035), text_encoder=clip_with_projection(3),
        tokenizer=tokenizer, text_encoder_2=clip_with_projection(4), tokenizer_2=tokenizer_2 or tokenizer,
        text_encoder_3=None if t5 is None else tiny_t5(64, seed=5, vocab=len(t5)), tokenizer_3=t5))


def build_flux(tokenizer, t5):
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                                   attention_head_dim=16, num_attention_heads=2,
                                                   joint_attention_dim=32, pooled_projection_dim=32,
                                                   axes_dims_rope=[4, 4, 8])
    return quiet(diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), transformer=transformer,
        vae=vae(block_out_channels=[4], down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
                latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=tiny_clip_text_model(hidden_size=32, seed=6), tokenizer=tokenizer,
        text_encoder_2=tiny_t5(32, seed=7, vocab=len(t5)), tokenizer_2=t5))


def build_pixart(t5, sigma: bool = False):
    torch.manual_seed(0)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    cls = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    return quiet(cls(tokenizer=t5, text_encoder=tiny_t5(32, seed=8, vocab=len(t5)), vae=vae(), transformer=transformer,
                     scheduler=ddim()))


# ------------------------------------------------------------------------------ guards
class KeywordGuard:
    """A guard that flags texts containing a keyword (for routing tests: which text reaches which encoder).

    It judges the text it is given exactly (``truncated`` never set: it reads all of it) and has an
    encoder of its own (the tiny CLIP), so it never shares the pipeline's.
    """

    def __init__(self, encoder, keyword: str = "knife", long_prompts: bool = True) -> None:
        self.encoder, self.keyword, self.long_prompts = encoder, keyword, long_prompts
        self.seen: list[str] = []

    def check(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.seen.extend(prompts)
        return [Verdict(prompt=p, unsafe=self.keyword in p.lower(), score=10.0 if self.keyword in p.lower() else 0.0,
                        concept=self.keyword) for p in prompts]


def build_kandinsky_prior(tokenizer):
    """A tiny Kandinsky 2.2 prior: text in, ``image_embeds`` and ``negative_image_embeds`` out (no images)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    prior = diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=224, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=1, patch_size=14))
    scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                          num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0)
    return quiet(diffusers.KandinskyV22PriorPipeline(
        prior=prior, image_encoder=image_encoder, text_encoder=clip_with_projection(1), tokenizer=tokenizer,
        scheduler=scheduler, image_processor=CLIPImageProcessor(crop_size=224, size=224)))
