"""The ControlNet generator: its edge maps, that the edge map really conditions the output, the batched loop against the
diffusers pipeline, the stage's files and fingerprint, and the loader's message for an unreachable id."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sgid_utils.augment.batched import generate_batch, generate_many
from sgid_utils.augment.edges import canny_edges
from sgid_utils.augment.generation import generate_candidates, preview_generators
from sgid_utils.core import catalog
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.seeding import torch_rng
from sgid_utils.models.loading import ModelLoadError, load_controlnet_img2img, load_img2img
from sgid_utils.params.load import ParamsError

from .conftest import ATOL, GUIDANCE, STEPS, STRENGTH, copy_stages, seeds_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(assets):
    """The tiny ControlNet saved with save_pretrained by the smoke builders, loaded as a hub id would be."""
    models = assets[0]
    assert (models / "controlnet" / "config.json").exists()
    return load_controlnet_img2img(str(models / "sd"), str(models / "controlnet"))


@pytest.fixture(scope="module")
def same_size(assets):
    paths = sorted((assets[1] / "train").rglob("*.jpg"))[:3]
    return [Image.open(p).convert("RGB").resize((64, 48), Image.Resampling.LANCZOS) for p in paths]


@pytest.fixture(scope="module")
def edges(same_size):
    return [canny_edges(image, 100, 200) for image in same_size]


def per_image(pipe, image, embeds, guidance, seeds, control, scale=1.0):
    return pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], image=image, control_image=control,
                controlnet_conditioning_scale=scale, strength=STRENGTH, guidance_scale=guidance,
                num_inference_steps=STEPS, num_images_per_prompt=len(seeds), generator=[torch_rng(s) for s in seeds],
                output_type="np").images


def test_canny_edges_are_opencvs_on_three_channels(same_size):
    import cv2

    image = same_size[0]
    edges = canny_edges(image, 100, 200)
    arr = np.asarray(edges)
    assert edges.size == image.size and arr.shape[2] == 3 and (arr[..., 0] == arr[..., 2]).all()
    assert set(np.unique(arr)) <= {0, 255} and (arr > 0).any()
    assert np.array_equal(arr[..., 0], cv2.Canny(np.asarray(image), 100, 200))
    assert (np.asarray(canny_edges(image, 300, 600)) > 0).sum() < (arr > 0).sum()  # higher thresholds, fewer edges


def test_the_tiny_controlnet_has_live_zero_convolutions(pipe):
    """from_unet zero-initialises these; left at zero the ControlNet would add nothing and no test could see it."""
    net = pipe.controlnet
    for conv in [net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block]:
        assert conv.weight.abs().sum() > 0


def test_the_edge_map_conditions_the_output(pipe, same_size, edges, prompts):
    """Everything equal but the edge map (another image's, or none at all): the candidates change."""
    seeds = seeds_for(0)
    own = per_image(pipe, same_size[0], prompts[0], 1.2, seeds, edges[0])
    for other in (edges[1], Image.new("RGB", edges[0].size)):
        assert np.abs(own - per_image(pipe, same_size[0], prompts[0], 1.2, seeds, other)).max() > 1e-2
    # At conditioning scale 0 the ControlNet adds nothing: the plain img2img pipeline's images.
    img2img = per_image_plain(pipe, same_size[0], prompts[0], 1.2, seeds)
    off = per_image(pipe, same_size[0], prompts[0], 1.2, seeds, edges[0], scale=0.0)
    assert np.abs(off - img2img).max() < ATOL
    assert np.abs(own - img2img).max() > 1e-2


def per_image_plain(pipe, image, embeds, guidance, seeds):
    """The img2img pipeline on the ControlNet pipeline's own components."""
    from diffusers import StableDiffusionImg2ImgPipeline

    plain = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    return plain(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], image=image, strength=STRENGTH,
                 guidance_scale=guidance, num_inference_steps=STEPS, num_images_per_prompt=len(seeds),
                 generator=[torch_rng(s) for s in seeds], output_type="np").images


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_batch_matches_the_controlnet_pipeline(pipe, same_size, edges, prompts, scale):
    """Per-sample guidance (no CFG, 1.2, 7.5) and per-source edge maps in one loop, each equal to its own pipeline
    call."""
    seeds = [seeds_for(i) for i in range(3)]
    out = generate_batch(pipe, same_size, [e for e, _ in prompts], [n for _, n in prompts], GUIDANCE,
                         STRENGTH, STEPS, seeds, output_type="np", control_images=edges, conditioning_scale=scale)
    for i in range(3):
        ref = per_image(pipe, same_size[i], prompts[i], GUIDANCE[i], seeds[i], edges[i], scale)
        assert np.abs(np.stack(out[i]) - ref).max() < ATOL
        assert np.abs(ref[0] - ref[1]).max() > 0.1  # the candidates differ: the comparison has power


def test_batched_edge_maps_belong_to_their_own_source(pipe, same_size, edges, prompts):
    """Swapping two sources' edge maps in a batch changes exactly those sources' candidates."""
    seeds = [seeds_for(i) for i in range(3)]
    args = ([e for e, _ in prompts], [n for _, n in prompts], GUIDANCE, STRENGTH, STEPS, seeds)
    right = generate_batch(pipe, same_size, *args, output_type="np", control_images=edges)
    swapped = generate_batch(pipe, same_size, *args, output_type="np", control_images=[edges[1], edges[0], edges[2]])
    assert np.abs(np.stack(right[0]) - np.stack(swapped[0])).max() > 1e-2
    assert np.abs(np.stack(right[2]) - np.stack(swapped[2])).max() < ATOL


def test_generate_many_with_mixed_sizes_and_pil_output(pipe, same_size, prompts):
    images = [same_size[0], same_size[1].resize((40, 32)), same_size[2]]
    controls = [canny_edges(image, 100, 200) for image in images]
    seeds = [seeds_for(i, k=1 + i % 2) for i in range(3)]
    out = generate_many(pipe, images, [e for e, _ in prompts], [n for _, n in prompts], GUIDANCE, STRENGTH,
                        STEPS, seeds, batch_size=2, control_images=controls)
    for i, image in enumerate(images):
        ref = generate_candidates(pipe, *prompts[i], image, GUIDANCE[i], STRENGTH, STEPS, seeds[i], controls[i])
        assert [o.size for o in out[i]] == [r.size for r in ref] and len(ref) == len(seeds[i])
        for a, b in zip(out[i], ref):
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_rejects_missing_or_misfit_control_images(pipe, assets, same_size, edges, prompts):
    e, n = prompts[0]
    with pytest.raises(ValueError, match="ControlNet pipeline needs them"):
        generate_batch(pipe, same_size[:1], [e], [n], [1.2], STRENGTH, STEPS, [seeds_for(0)])
    with pytest.raises(ValueError, match="control_images go with"):
        generate_batch(load_img2img(str(assets[0] / "sd")), same_size[:1], [e], [n], [1.2], STRENGTH, STEPS,
                       [seeds_for(0)],
                       control_images=edges[:1])
    with pytest.raises(ValueError, match="of the source's size"):
        generate_batch(pipe, same_size[:1], [e], [n], [1.2], STRENGTH, STEPS, [seeds_for(0)],
                       control_images=[edges[0].resize((32, 32))])


def test_unreachable_controlnet_id_says_what_to_do(assets):
    with pytest.raises(ModelLoadError) as err:
        load_controlnet_img2img(str(assets[0] / "sd"), "lllyasviel/no-such-controlnet-xyz")
    msg = str(err.value)
    assert "lllyasviel/no-such-controlnet-xyz" in msg and "offline" in msg and "params/smoke.yaml" in msg
    assert "models.controlnet" in msg and "generation stage" in msg


def test_thresholds_are_validated(make_params):
    with pytest.raises(ParamsError, match="low_threshold"):
        make_params("bad", generation={"controlnet": {"low_threshold": 250, "high_threshold": 100}})
    with pytest.raises(ParamsError, match="generation.generator"):
        make_params("bad2", generation={"generator": "controlnett"})


def test_the_generator_is_in_the_fingerprint_and_controlnet_settings_only_when_used(make_params):
    plain = make_params("plain")
    other_thresholds = make_params("t", generation={"controlnet": {"low_threshold": 50}})
    controlled = make_params("c", generation={"generator": "controlnet"})
    assert "generator" not in fingerprint(plain, "generation")["generation"]  # img2img: as every run before generators
    assert ("models.controlnet" not in fingerprint(plain, "generation")
            and "controlnet" not in fingerprint(plain, "generation")["generation"])
    assert fingerprint(plain, "generation") == fingerprint(other_thresholds, "generation")  # unused: no change
    assert fingerprint(controlled, "upscaling")["models.controlnet"] == controlled.models.controlnet
    assert fingerprint(controlled, "curation") != fingerprint(plain, "curation")  # downstream stages follow
    assert fingerprint(controlled, "generation")["generation"]["generator"] == "controlnet"
    for name, change in (("lo", {"low_threshold": 50}), ("hi", {"high_threshold": 150}),
                         ("sc", {"conditioning_scale": 0.5})):
        other = make_params(name, generation={"generator": "controlnet", "controlnet": change})
        assert fingerprint(other, "generation") != fingerprint(controlled, "generation"), change
    other_model = controlled.model_copy(deep=True)
    other_model.models.controlnet = "someone/other-canny"
    assert fingerprint(other_model, "generation") != fingerprint(controlled, "generation")


@pytest.fixture(scope="module")
def controlnet_run(assets, pipeline_run, tmp_path_factory):
    """The generation stage under the ControlNet generator, on the pipeline run's captions and scores."""
    from sgid_utils.params.load import load_params

    from .conftest import write_params

    params = load_params(write_params(tmp_path_factory.mktemp("controlnet"), *assets,
                                      generation={"generator": "controlnet"}))
    copy_stages(pipeline_run, params, "data", "captioning", "similarity")
    assert run_stage("generation", params) is not None
    return params


def test_the_stage_saves_edge_maps_beside_its_candidates(controlnet_run, pipeline_run):
    params, run = controlnet_run, RunDir.of(controlnet_run)
    manifest, plain = catalog.load(params, "manifest_raw"), catalog.load(pipeline_run, "manifest_raw")
    assert sorted(manifest.image_id) == sorted(plain.image_id)  # same sources, candidates, seeds, prompts, scales
    cols = ["image_id", "k", "seed", "prompt", "guidance_scale", "input_width", "input_height"]
    pd.testing.assert_frame_equal(manifest.sort_values(["image_id", "k"])[cols].reset_index(drop=True),
                                  plain.sort_values(["image_id", "k"])[cols].reset_index(drop=True))
    assert "edges" not in plain
    for row in manifest.itertuples():
        edge = Image.open(run.absolute(row.edges))
        assert run.absolute(row.edges) == run.edge_map("raw", row.image_id)
        assert edge.size == (row.input_width, row.input_height) and edge.mode == "RGB"
    changed = [np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).max()
               for a, b in zip(manifest.sort_values(["image_id", "k"]).path, plain.sort_values(["image_id", "k"]).path)]
    assert min(changed) > 0  # every candidate differs from its img2img twin


def test_controlnet_stage_resumes_byte_identically_and_batched_matches(make_params, controlnet_run):
    first = catalog.load(controlnet_run, "manifest_raw")
    for name, generation in (("again", {"generator": "controlnet"}),
                             ("batched", {"generator": "controlnet", "batch_size": 4})):
        params = make_params(name, generation=generation)
        copy_stages(controlnet_run, params, "data", "captioning", "similarity")
        run_stage("generation", params)
        items = RunDir.of(params).items("generation")
        for image_id in first.image_id.unique()[::2]:
            (items / f"{image_id}.json").unlink()
        again = run_stage("generation", params)
        for a, b in zip(sorted(first.path), sorted(again.path)):
            if name == "again":
                assert open(a, "rb").read() == open(b, "rb").read()
            else:  # the batched loop: within a level or two of the pipeline, as for img2img
                diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
                assert diff.max() <= 2, (a, diff.max())


def test_preview_shows_both_generators_as_the_stages_make_them(pipeline_run, controlnet_run):
    """Notebook 03's side by side equals the candidates each generator's stage saved (CPU, per-image pipeline), up to
    a level or two: with several CPU threads, float sums over differently aligned buffers differ in the last bits."""
    plain, controlled = catalog.load(pipeline_run, "manifest_raw"), catalog.load(controlnet_run, "manifest_raw")
    ids = list(plain.image_id.drop_duplicates()[:2])
    shown = preview_generators(pipeline_run, ids)
    assert [s["image_id"] for s in shown] == ids
    for item in shown:
        for kind, manifest in (("img2img", plain), ("controlnet", controlled)):
            saved = manifest[manifest.image_id == item["image_id"]].sort_values("k").path
            for image, path in zip(item[kind], saved, strict=True):
                diff = np.abs(np.asarray(image, dtype=int) - np.asarray(Image.open(path), dtype=int))
                assert diff.max() <= 2 and diff.mean() < 0.05, (kind, diff.max(), diff.mean())
        edges = controlled[controlled.image_id == item["image_id"]].edges.iloc[0]
        assert np.array_equal(np.asarray(item["edges"]),
                              np.asarray(Image.open(RunDir.of(controlnet_run).absolute(edges))))


def test_the_flop_floor_counts_the_controlnet():
    """The real SD 1.5 ControlNet (encoder half of the UNet, random weights, meta device) adds ~35 % per UNet step."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from sgid_utils.models import builders
    from sgid_utils.models.flops import img2img_flops

    with torch.device("meta"):
        pipe = builders.stable_diffusion("real")
        pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(pipe, controlnet=builders.controlnet("real"))
    assert sum(p.numel() for p in pipe.controlnet.parameters()) == 361_279_120
    flops = img2img_flops(pipe, 512, 512)
    assert flops["unet_cfg_pair"] / 1e12 == pytest.approx(1.607, abs=1e-3)  # as without the ControlNet
    assert flops["controlnet_cfg_pair"] / 1e12 == pytest.approx(0.567, abs=1e-3)


def test_the_controlnet_pipeline_shares_the_img2img_modules_in_their_dtype(assets):
    """Nothing is loaded twice and nothing is upcast: the fp16 UNet of the cached img2img pipeline stays fp16."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_controlnet_img2img(str(assets[0] / "sd"), str(assets[0] / "controlnet"), "cpu", torch.float16)
        plain = load_img2img(str(assets[0] / "sd"), "cpu", torch.float16)
    assert pipe.unet is plain.unet and pipe.vae is plain.vae and pipe.text_encoder is plain.text_encoder
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.controlnet.dtype, plain.unet.dtype} == {torch.float16}


def test_the_ablation_profiles_pair_each_controlnet_strength_with_plain_sgid():
    from sgid_utils.params.load import load_params

    from .conftest import REPO

    for name, strengths in (("pets", {0.3, 0.5, 0.7}), ("flowers", {0.3, 0.5, 0.7}), ("smoke", {0.5})):
        profile = load_params(REPO / "params" / f"{name}_ablations.yaml")
        controlled = {a.set["generation.strength"]: a for a in profile.ablations
                      if a.set.get("generation.generator") == "controlnet"}
        plain = {a.set["generation.strength"]: a for a in profile.ablations
                 if "generation.strength" in a.set and "generation.generator" not in a.set}
        assert set(controlled) == strengths and strengths <= set(plain), name
        for strength, variant in controlled.items():
            assert variant.label == f"SGID + ControlNet (strength {strength})"
            assert variant.set["dataset.max_per_class"] == plain[strength].set["dataset.max_per_class"]  # same subset


def test_a_controlnet_variant_trains_and_is_labelled(make_params, pipeline_run):
    """The whole chain after generation runs unchanged on ControlNet candidates; the row and the set carry the label."""
    from sgid_utils.stages import ablations

    label = "SGID + ControlNet (strength 0.3)"
    params = make_params("abl-cn", ablations=[{"name": "controlnet-0.3", "label": label,
                                               "set": {"generation.generator": "controlnet"}}])
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "training")
    table = ablations.run(params).set_index("Variant")
    assert list(table.index) == [label] and "(n=2)" in table.loc[label, "SGID (100%)"]
    sets = catalog.load(params, "ablation_set_metrics", missing=None).set_index("Variant")
    assert sets.loc[label, "generator"] == "controlnet" and sets.loc[label, "strength"] == 0.3
