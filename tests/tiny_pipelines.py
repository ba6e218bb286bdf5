"""Tiny random-weight diffusers pipelines of every family regprim runs, written to folders with
``save_pretrained`` as a user would bring them: Stable Diffusion 1.x/2.x, SDXL, SD3, FLUX,
PixArt-Sigma, DiT, a pixel U-Net, and one-step Turbo folders. Their tokenizers are written here
from a few dozen tokens (a CLIP BPE vocabulary and a T5 unigram model): nothing is downloaded.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = ("a", "photo", "of", "face", "smiling", "the", "red", "cat", "dog", "blurry")
MAX_TOKENS = 12


def clip_tokenizer():
    """A CLIP BPE tokenizer: the 26 letters (alone and word-final), the words of ``WORDS`` as
    merges, and the two special tokens."""
    import tempfile

    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        return _clip_tokenizer(Path(tmp), transformers)


def _clip_tokenizer(folder: Path, transformers):
    vocab: dict[str, int] = {}
    for end in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + end] = len(vocab)
    merges: list[str] = []
    for word in WORDS:
        current = word[0]
        for i, ch in enumerate(word[1:], 1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{current} {piece}")
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS
    )


def t5_tokenizer():
    """A T5 unigram tokenizer of the words of ``WORDS`` and the 26 letters."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in string.ascii_lowercase]
    tk = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return transformers.T5TokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=MAX_TOKENS,
    )


def clip_encoder(
    tok,
    hidden: int = 8,
    projection: bool = False,
    seed: int = 10,
    heads: int = 2,
    widen: int = 2,
    vocab: int | None = None,
):
    """A CLIP text encoder of two layers (``benchmarks/real_sizes.py``: of a real width, with
    CLIP's 49408-token vocabulary and 64-wide heads)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=widen * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=tok.model_max_length,
        projection_dim=hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(cfg).eval()


def t5_encoder(tok, d_model: int = 8, seed: int = 11):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=4,
        d_ff=16,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return transformers.T5EncoderModel(cfg).eval()


def vae(latent_channels: int = 4, seed: int = 1, **config):
    """A two-block AutoencoderKL; ``config`` overrides any setting (real sizes: the benchmark)."""
    import diffusers

    torch.manual_seed(seed)
    tiny = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "block_out_channels": (8, 16),
        "latent_channels": latent_channels,
        "norm_num_groups": 4,
        "sample_size": 16,
    }
    return diffusers.AutoencoderKL(**(tiny | config)).eval()


def cond_unet(cross: int = 8, seed: int = 3, **config):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=2,
        norm_num_groups=4,
        **config,
    ).eval()


def ddim(**kwargs):
    import diffusers

    return diffusers.DDIMScheduler(
        num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False, **kwargs
    )


def sd(folder: Path, scheduler=None) -> Path:
    """Stable Diffusion 1.x/2.x: CLIP tokenizer and text encoder, conditional U-Net, VAE."""
    import diffusers

    tok = clip_tokenizer()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae(),
        text_encoder=clip_encoder(tok),
        tokenizer=tok,
        unet=cond_unet(),
        scheduler=scheduler or ddim(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def sdxl(folder: Path, scheduler=None) -> Path:
    """SDXL: two CLIP encoders (the second with projection: pooled embeddings), a U-Net with
    the text_time added conditions."""
    import diffusers

    tok = clip_tokenizer()
    unet = cond_unet(
        cross=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 8,
        transformer_layers_per_block=1,
    )
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=clip_encoder(tok),
        text_encoder_2=clip_encoder(tok, projection=True, seed=12),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=scheduler or diffusers.EulerDiscreteScheduler(timestep_spacing="leading"),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def sd3(folder: Path, t5: bool = True) -> Path:
    """SD3: MMDiT transformer, flow matching, CLIP-L, CLIP-G and (optionally) T5."""
    import diffusers

    tok = clip_tokenizer()
    t5tok = t5_tokenizer()
    torch.manual_seed(4)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=8,
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=clip_encoder(tok, projection=True),
        tokenizer=tok,
        text_encoder_2=clip_encoder(tok, projection=True, seed=12),
        tokenizer_2=tok,
        text_encoder_3=t5_encoder(t5tok, d_model=16) if t5 else None,
        tokenizer_3=t5tok if t5 else None,
    )
    pipe.save_pretrained(folder)
    return folder


def flux(folder: Path, guidance_embeds: bool = True) -> Path:
    """FLUX: packed 2x2 latents, image and text ids, CLIP pooled + T5, the guidance embedding,
    the resolution-dependent shift ``mu``."""
    import diffusers

    tok = clip_tokenizer()
    t5tok = t5_tokenizer()
    torch.manual_seed(5)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=clip_encoder(tok),
        tokenizer=tok,
        text_encoder_2=t5_encoder(t5tok),
        tokenizer_2=t5tok,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return folder


def pixart(folder: Path) -> Path:
    """PixArt-Sigma: a DiT-style transformer with T5 captions and learned variance."""
    import diffusers

    t5tok = t5_tokenizer()
    torch.manual_seed(6)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        caption_channels=8,
        cross_attention_dim=8,
        patch_size=2,
        norm_num_groups=4,
    ).eval()
    pipe = diffusers.PixArtSigmaPipeline(
        tokenizer=t5tok,
        text_encoder=t5_encoder(t5tok),
        vae=vae(),
        transformer=transformer,
        scheduler=ddim(),
    )
    pipe.save_pretrained(folder)
    return folder


def dit(folder: Path, classes: int = 1000) -> Path:
    """A class-conditional DiT with ImageNet's 1000 classes (DiTPipeline's guidance takes label
    1000 as "no class") and names for three of them (id2label)."""
    import diffusers

    torch.manual_seed(2)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        norm_num_groups=4,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=classes,
    ).eval()
    diffusers.DiTPipeline(transformer=transformer, vae=vae(), scheduler=ddim()).save_pretrained(
        folder
    )
    # save_pretrained does not write id2label; DiT folders carry it in model_index.json
    index = json.loads((folder / "model_index.json").read_text())
    names = {1: "goldfish, Carassius auratus", 281: "tabby, tabby cat", 207: "golden retriever"}
    (folder / "model_index.json").write_text(json.dumps(index | {"id2label": names}))
    return folder


def pixel_unet(seed: int = 0, size: int = 16):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def pixel(folder: Path, scheduler=None) -> Path:
    """A pixel-space U-Net (DDPMPipeline's layout) with any scheduler."""
    import diffusers

    diffusers.DDPMPipeline(unet=pixel_unet(), scheduler=scheduler or ddim()).save_pretrained(folder)
    return folder


def turbo(folder: Path) -> Path:
    """A one-step distilled model as SD-Turbo ships: SD's layout, Euler ancestral (noise-free
    at its last step), sampled in one step without guidance."""
    import diffusers

    return sd(
        folder,
        diffusers.EulerAncestralDiscreteScheduler(timestep_spacing="trailing", steps_offset=1),
    )


FAMILIES = {
    "sd": sd,
    "sdxl": sdxl,
    "sd3": sd3,
    "flux": flux,
    "pixart": pixart,
    "dit": dit,
    "pixel": pixel,
    "turbo": turbo,
}
