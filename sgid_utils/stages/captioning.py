"""The captioning stage: BLIP captions, 10 by nucleus sampling and 10 by beam search per training image.

Both run batched over images. Beam search is deterministic; its width (``captioning.num_beams``, 10) is not
given by the report: returning 10 beam captions forces at least 10 beams, and 10 is that minimum. Nucleus
sampling inside ``generate`` draws from one global RNG for the whole batch (``generate`` takes no per-row
generator), so an image's captions would depend on its batch-mates; here each image's random numbers come
from its own seed, derived from (the generation draw's seed, ``seeding.draw_seed``; image id), and
``SeededNucleusSampler`` picks each token with them. An image's random draws are then the same whatever the
batch size, order, shard or device, and so are its captions up to floating-point differences in the logits
(exactly, on the CPU in fp32).

Per batch, BLIP's vision encoder runs once (``image_embeddings``) and both decodings start from its output
(``decode``: what BLIP's ``generate`` does after its own encoder call, which would run it once per decoding); the
sampler checks its logits without a host sync per step (``SeededNucleusSampler.check``, once per call).

Nucleus sampling can return the same caption twice (short captions from a peaked model often do). Duplicates
are kept, as 20 captions per image is the method's pool, and counted: the table's ``duplicate`` column is True
where the image already has that exact caption at an earlier row (nucleus ranks first, then beam ranks), so
``captions.groupby("image_id").duplicate.sum()`` is how many of an image's captions repeat another.
"""

from __future__ import annotations

import pandas as pd
import torch
from transformers import LogitsProcessor, TopPLogitsWarper

from sgid_utils.augment.prompts import mark_duplicates, with_decoding_column
from sgid_utils.core import catalog
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, run_items
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.seeding import derive_seed, draw_seed
from sgid_utils.models.loading import load_captioner, resolve_device, resolve_dtype
from sgid_utils.params.schema import CaptioningParams, Params

CAPTION_COLUMNS = ["image_id", "decoding", "rank", "caption", "duplicate"]


def _clean(texts: list[str]) -> list[str]:
    return [" ".join(t.split()) for t in texts]


class SeededNucleusSampler(LogitsProcessor):
    """Top-p sampling with a pre-drawn uniform per (row, step): each row's tokens depend only on its own seed.

    Filters with transformers' ``TopPLogitsWarper``, samples by inverse CDF with
    ``uniforms[row, step]`` and returns logits that allow only the chosen token, so
    ``generate``'s own multinomial draw (run with ``top_k=0``, ``top_p=1``) returns it
    with probability one. One sampler serves one ``generate`` call: it counts steps from
    the length of the first input it sees. Non-finite logits are noted on the device and raised by ``check``
    after the call: a per-step test would stop the host at every token.
    """

    def __init__(self, top_p: float, uniforms: torch.Tensor) -> None:
        self.top_p = TopPLogitsWarper(top_p=top_p)
        self.uniforms = uniforms
        self.start: int | None = None
        self.finite: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, length = input_ids.shape
        if rows != len(self.uniforms):
            raise ValueError(f"{rows} rows to sample but uniforms for {len(self.uniforms)}")
        if self.start is None:
            self.start, self.uniforms = length, self.uniforms.to(scores.device)
        step = length - self.start
        if step >= self.uniforms.shape[1]:
            raise ValueError(f"step {step} beyond the {self.uniforms.shape[1]} pre-drawn uniforms (max_new_tokens)")
        probs = torch.softmax(self.top_p(input_ids, scores.float()), dim=-1)
        cdf = probs.cumsum(-1)
        finite = torch.isfinite(cdf[:, -1]).all()
        self.finite = finite if self.finite is None else self.finite & finite
        u = self.uniforms[:, step:step + 1] * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, -float("inf")).scatter_(1, tokens, 0.0)

    def check(self) -> None:
        """Raise if any step's logits were not finite (NaN or inf), once the call is over."""
        if self.finite is not None and not bool(self.finite):
            raise ValueError("the captioner's logits are not finite (NaN or inf): check the model and captioning dtype")


@torch.inference_mode()
def pixel_inputs(model, processor, images: list):
    """The processor's model inputs for a batch of images, on the model's device and dtype (for both decodings)."""
    return processor(images=images, return_tensors="pt").to(model.device, model.dtype)


@torch.inference_mode()
def image_embeddings(model, inputs) -> torch.Tensor:
    """BLIP's vision encoder on a batch of ``pixel_inputs``, once for both decodings."""
    return model.vision_model(pixel_values=inputs["pixel_values"])[0]


@torch.inference_mode()
def decode(model, embeds: torch.Tensor, **generate_kwargs) -> torch.Tensor:
    """Token ids of BLIP's text decoder over ``image_embeddings``: ``BlipForConditionalGeneration.generate`` after
    its vision encoder (a [BOS] prompt, [SEP] ends a caption, every image token attended)."""
    text = model.config.text_config
    return model.text_decoder.generate(
        input_ids=torch.full((len(embeds), 1), text.bos_token_id, dtype=torch.long, device=embeds.device),
        eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id, attention_mask=None,
        encoder_hidden_states=embeds,
        encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device),
        **generate_kwargs,
    )


@torch.inference_mode()
def nucleus_captions(model, processor, embeds: torch.Tensor, cfg: CaptioningParams,
                     seeds: list[int]) -> list[list[str]]:
    """``cfg.num_nucleus`` top-p captions per image of ``embeds`` (``image_embeddings``); image i's depend only on
    ``seeds[i]``."""
    if cfg.num_nucleus == 0:
        return [[] for _ in seeds]
    n = cfg.num_nucleus
    uniforms = torch.cat([torch.rand(n, cfg.max_new_tokens, generator=torch.Generator().manual_seed(s)) for s in seeds])
    sampler = SeededNucleusSampler(cfg.top_p, uniforms)
    out = decode(model, embeds, do_sample=True, num_beams=1, top_k=0, top_p=1.0, temperature=1.0,
                 num_return_sequences=n, max_new_tokens=cfg.max_new_tokens, logits_processor=[sampler])
    sampler.check()
    texts = _clean(processor.batch_decode(out, skip_special_tokens=True))
    return [texts[i * n:(i + 1) * n] for i in range(len(seeds))]


@torch.inference_mode()
def beam_captions(model, processor, embeds: torch.Tensor, cfg: CaptioningParams) -> list[list[str]]:
    """``cfg.num_beam`` beam-search captions per image of ``embeds`` (``image_embeddings``)."""
    count = len(embeds)
    if cfg.num_beam == 0:
        return [[] for _ in range(count)]
    out = decode(model, embeds, num_beams=cfg.num_beams, num_return_sequences=cfg.num_beam,
                 max_new_tokens=cfg.max_new_tokens, do_sample=False)
    texts = _clean(processor.batch_decode(out, skip_special_tokens=True))
    return [texts[i * cfg.num_beam:(i + 1) * cfg.num_beam] for i in range(count)]


def caption_batch(model, processor, images: list, cfg: CaptioningParams,
                  seeds: list[int]) -> tuple[list[list[str]], list[list[str]]]:
    """(nucleus, beam) captions of each image, the vision encoder run once for both."""
    embeds = image_embeddings(model, pixel_inputs(model, processor, images))
    return nucleus_captions(model, processor, embeds, cfg, seeds), beam_captions(model, processor, embeds, cfg)


def caption_records(image_id: str, nucleus: list[str], beam: list[str]) -> list[dict]:
    return [
        {"image_id": image_id, "decoding": decoding, "rank": rank, "caption": text}
        for decoding, texts in (("nucleus", nucleus), ("beam", beam))
        for rank, text in enumerate(texts)
    ]


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Caption every training image, resuming from finished items; the table once every image has its captions."""
    run = RunDir.of(params)
    train = images[images.split == "train"].set_index("image_id")
    cfg = params.captioning

    def start(todo: list[str]) -> BatchPlan:
        device = resolve_device(params)
        model, processor = load_captioner(params.models.captioner, str(device), resolve_dtype("auto", device))

        def process(ids: list[str]) -> dict[str, list[dict]]:
            seeds = [derive_seed(draw_seed(params), i, purpose="nucleus") for i in ids]
            nucleus, beams = caption_batch(model, processor, [load_run_image(train.path[i]) for i in ids], cfg, seeds)
            return {i: caption_records(i, sampled, beam) for i, sampled, beam in zip(ids, nucleus, beams)}

        return BatchPlan(process, cfg.batch_size, "captioning", "captioning.batch_size")

    records = run_items(run.items("captioning"), list(train.index), start)
    if records is None:
        return None
    rows = with_decoding_column(pd.DataFrame([r for recs in records for r in recs]))  # older records too
    table = mark_duplicates(rows.reindex(columns=CAPTION_COLUMNS[:-1]))
    catalog.save(params, "captions", table)
    return table
