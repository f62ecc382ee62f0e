"""Batched img2img with per-sample guidance gives each candidate what the per-image pipeline gives it."""

import numpy as np
import pytest
import torch
from PIL import Image

from sgid_utils.augment.batched import UNET_ROWS, generate_batch, generate_many, plan_batches
from sgid_utils.augment.generation import PromptEncoder, generate_candidates
from sgid_utils.core.seeding import torch_rng
from sgid_utils.models import builders
from sgid_utils.models.flops import img2img_flops
from sgid_utils.models.loading import load_img2img

from .conftest import ATOL, GUIDANCE, PROMPTS, STEPS, STRENGTH, seeds_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(assets):
    return load_img2img(str(assets[0] / "sd"))


@pytest.fixture(scope="module")
def ddim_pipe(pipe):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline.from_pipe(pipe, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))


@pytest.fixture(scope="module")
def sources(assets):
    """Five smoke-folder images of varied sizes."""
    paths = sorted((assets[1] / "train").rglob("*.jpg"))[:5]
    return [Image.open(p).convert("RGB") for p in paths]


def per_image(pipe, image, embeds, guidance, seeds, eta=0.0):
    """The per-image path (generation.generate_candidates' call) with float output."""
    return pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], image=image, strength=STRENGTH,
                guidance_scale=guidance, num_inference_steps=STEPS, num_images_per_prompt=len(seeds),
                generator=[torch_rng(s) for s in seeds], eta=eta, output_type="np").images


def batched(pipe, images, embeds, guidance, seeds, **kw):
    return generate_batch(pipe, images, [e for e, _ in embeds], [n for _, n in embeds], guidance, STRENGTH, STEPS,
                          seeds, output_type="np", **kw)


@pytest.fixture(scope="module")
def same_size(sources):
    return [s.resize((64, 48), Image.Resampling.LANCZOS) for s in sources[:3]]


@pytest.mark.parametrize("scheduler", ["pndm", "ddim_eta"])
def test_batch_matches_per_image_pipeline(request, scheduler, same_size, prompts):
    """PNDM (SD 1.5's) and DDIM with eta > 0, whose steps draw noise from each candidate's generator."""
    p, eta = ((request.getfixturevalue("pipe"), 0.0) if scheduler == "pndm"
              else (request.getfixturevalue("ddim_pipe"), 0.5))
    seeds = [seeds_for(i) for i in range(3)]
    out = batched(p, same_size, prompts, GUIDANCE, seeds, eta=eta)
    for i in range(3):
        ref = per_image(p, same_size[i], prompts[i], GUIDANCE[i], seeds[i], eta)
        assert np.abs(np.stack(out[i]) - ref).max() < ATOL
        assert np.abs(ref[0] - ref[1]).max() > 0.1  # the candidates differ: the comparison has power


def test_batch_pil_matches_generate_candidates(pipe, same_size, prompts):
    seeds = [seeds_for(i) for i in range(3)]
    out = generate_batch(pipe, same_size, [e for e, _ in prompts], [n for _, n in prompts], GUIDANCE,
                         STRENGTH, STEPS, seeds)
    for i in range(3):
        ref = generate_candidates(pipe, *prompts[i], same_size[i], GUIDANCE[i], STRENGTH, STEPS, seeds[i])
        for a, b in zip(out[i], ref):
            assert a.size == b.size
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_guidance_is_per_sample(pipe, same_size, prompts):
    """Another source's scale, or CFG at a scale <= 1, would change the result."""
    seeds = [seeds_for(0)]
    own = batched(pipe, same_size[:1], prompts[:1], [1.2], seeds)[0]
    for other in (7.5, 0.8):
        assert np.abs(np.stack(own)
                      - np.stack(batched(pipe, same_size[:1], prompts[:1], [other], seeds)[0])).max() > 1e-3
    # At 0.8 the pipeline skips CFG: the result equals scale 1 (the conditional prediction), not 0.8's extrapolation.
    at_one = batched(pipe, same_size[:1], prompts[:1], [1.0], seeds)[0]
    below = batched(pipe, same_size[:1], prompts[:1], [0.8], seeds)[0]
    assert np.abs(np.stack(at_one) - np.stack(below)).max() < ATOL


def test_unconditional_branch_only_for_scales_above_one(pipe, same_size, prompts):
    batch_sizes = []
    UNET_ROWS.clear()
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        batched(pipe, same_size, prompts, GUIDANCE, [seeds_for(i) for i in range(3)])
    finally:
        hook.remove()
    assert batch_sizes and set(batch_sizes) == {2 * 3 + 2 * 2}  # 6 conditional + 4 unconditional (scales 1.2, 7.5)
    assert UNET_ROWS == {10: len(batch_sizes)}  # the stage's count of rows per UNet call says the same


def test_item_does_not_depend_on_its_batch(pipe, same_size, prompts):
    seeds = [seeds_for(i) for i in range(3)]
    together = batched(pipe, same_size, prompts, GUIDANCE, seeds)
    order = [2, 0, 1]
    permuted = batched(pipe, [same_size[i] for i in order], [prompts[i] for i in order], [GUIDANCE[i] for i in order],
                       [seeds[i] for i in order])
    for i in range(3):
        alone = batched(pipe, same_size[i:i + 1], prompts[i:i + 1], GUIDANCE[i:i + 1], seeds[i:i + 1])[0]
        assert np.abs(np.stack(alone) - np.stack(together[i])).max() < ATOL
        assert np.abs(np.stack(permuted[order.index(i)]) - np.stack(together[i])).max() < ATOL


def test_plan_batches_groups_by_model_input_size_and_prompt_length(pipe):
    assert pipe.vae_scale_factor == 4  # the tiny VAE: 66 x 50 enters the model as 64 x 48
    sizes = [(64, 48), (32, 32), (64, 48), (66, 50), (32, 32), (64, 48)]
    lengths = [77, 77, 77, 77, 77, 154]
    images = [Image.new("RGB", s) for s in sizes]
    embeds = [torch.zeros(1, n, 32) for n in lengths]
    assert plan_batches(pipe, images, embeds, batch_size=2) == [[0, 2], [3], [1, 4], [5]]


def test_mixed_sizes_in_input_order(pipe, sources, prompts):
    """Five sources of two model-input sizes, at most two per loop, each equal to its per-image result."""
    sizes = [(64, 48), (40, 32), (64, 48), (66, 50), (40, 32)]
    images = [s.resize(size, Image.Resampling.LANCZOS) for s, size in zip(sources, sizes)]
    embeds = [prompts[i % 3] for i in range(5)]
    guidance = [GUIDANCE[i % 3] for i in range(5)]
    seeds = [seeds_for(i, k=1 + i % 2) for i in range(5)]
    assert plan_batches(pipe, images, [e for e, _ in embeds], batch_size=2) == [[0, 2], [3], [1, 4]]
    out = generate_many(pipe, images, [e for e, _ in embeds], [n for _, n in embeds], guidance, STRENGTH, STEPS, seeds,
                        batch_size=2, output_type="np")
    for i, image in enumerate(images):
        ref = per_image(pipe, image, embeds[i], guidance[i], seeds[i])
        assert len(out[i]) == len(seeds[i])
        assert np.abs(np.stack(out[i]) - ref).max() < ATOL


def test_rejects_what_one_loop_cannot_run(pipe, ddim_pipe, prompts):
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    e, n = prompts[0]
    image = Image.new("RGB", (64, 48))
    with pytest.raises(ValueError, match="generate_many"):
        generate_batch(pipe, [image, Image.new("RGB", (32, 32))], [e, e], [n, n], [1.2, 1.2], STRENGTH, STEPS,
                       [seeds_for(0), seeds_for(1)])
    with pytest.raises(ValueError, match="one entry per source"):
        generate_batch(pipe, [image], [e], [n], [1.2, 1.2], STRENGTH, STEPS, [seeds_for(0)])
    with pytest.raises(ValueError, match="no denoising step"):  # DDIM; PNDM always keeps its extra step
        generate_batch(ddim_pipe, [image], [e], [n], [1.2], 0.05, STEPS, [seeds_for(0)])
    lcm_unet = UNet2DConditionModel.from_config({**pipe.unet.config, "time_cond_proj_dim": 8})
    with pytest.raises(ValueError, match="embedding"):
        generate_batch(StableDiffusionImg2ImgPipeline.from_pipe(pipe, unet=lcm_unet), [image], [e], [n],
                       [1.2], STRENGTH, STEPS, [seeds_for(0)])


def test_real_architectures_and_their_flops():
    """The --arch real configs are the published models: parameter counts, and FLOPs at 512 x 512."""
    with torch.device("meta"):
        pipe = builders.stable_diffusion("real")
        blip, _ = builders.blip("real")
        clip, _ = builders.clip("real")
        vit = builders.classifier(builders.VIT_B16, "real")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - a one-line helper of the asserts below
    assert count(pipe.unet) == 859_520_964
    assert count(pipe.vae) == 83_653_863
    assert count(pipe.text_encoder) == 123_060_480
    assert count(clip) == 151_277_313
    assert count(blip) == 223_971_644  # 247.4M on the Hub, which also stores the tied 30524 x 768 LM head
    assert count(vit) == 85_798_656
    flops = img2img_flops(pipe, 512, 512)
    assert flops["unet_cfg_pair"] / 1e12 == pytest.approx(1.607, abs=1e-3)
    assert flops["vae_encode"] / 1e12 == pytest.approx(1.117, abs=1e-3)
    assert flops["vae_decode"] / 1e12 == pytest.approx(2.515, abs=1e-3)


def test_half_precision_batch_matches_the_pipeline_and_fp32(assets, same_size, pipe):
    """The CUDA path's dtype plumbing (fp16 weights, fp32 guidance scales), run on the CPU: torch has fp16 kernels
    there."""
    import warnings

    with warnings.catch_warnings():  # diffusers warns that fp16 on the CPU may fail; these tiny ops do not
        warnings.simplefilter("ignore")
        half = load_img2img(str(assets[0] / "sd"), "cpu", torch.float16)
    embeds = [PromptEncoder(half)(p, "") for p in PROMPTS]
    seeds = [seeds_for(i) for i in range(3)]
    got = batched(half, same_size, embeds, GUIDANCE, seeds)
    full = batched(pipe, same_size, [PromptEncoder(pipe)(p, "") for p in PROMPTS], GUIDANCE, seeds)
    for i, g in enumerate(GUIDANCE):
        one = per_image(half, same_size[i], embeds[i], g, seeds[i])
        assert np.isfinite(np.stack(got[i])).all()
        assert np.abs(np.stack(got[i]) - one).max() < 0.03  # fp16 rounding (observed <= 0.01)
        assert np.abs(np.stack(got[i]) - np.stack(full[i])).max() < 0.03
