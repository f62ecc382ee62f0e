"""The LCM-LoRA sampler (generation.sampler: lcm): a tiny LCM-LoRA made here with peft and saved as diffusers saves
LoRAs, loaded through the package's loader; the stage runs its few steps with LCMScheduler, differs from the default
sampler, is deterministic and resumes; bad settings and an unreachable LoRA get one clear line; its fingerprint keeps
runs apart; the comparison and notebook 08 name it as a method of its own."""

import numpy as np
import pytest
import torch
from PIL import Image

from sgid_utils.augment.generation import generate_candidates
from sgid_utils.core import catalog
from sgid_utils.core.fingerprints import fingerprint
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage
from sgid_utils.core.sharing import variant_params
from sgid_utils.models.loading import ModelLoadError, load_img2img, load_lcm_img2img
from sgid_utils.params.load import ParamsError
from sgid_utils.params.samplers import largest_guidance, sampler_label

from .conftest import STRENGTH, copy_stages, seeds_for

pytestmark = pytest.mark.usefixtures("one_thread")
LCM_STEPS = 10  # int(10 x 0.3) = 3 UNet steps


@pytest.fixture(scope="module")
def lora(assets, tmp_path_factory):
    """A tiny LCM-LoRA: peft LoRA layers on the tiny UNet's attention projections, random non-zero weights, saved
    with the pipeline's save_lora_weights (pytorch_lora_weights.safetensors, the model card's file)."""
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(assets[0] / "sd", subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:  # peft starts lora_B at zero: a LoRA that changes nothing could pass any test
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    folder = tmp_path_factory.mktemp("lcm-lora")
    StableDiffusionImg2ImgPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    assert (folder / "pytorch_lora_weights.safetensors").exists()
    return str(folder)


@pytest.fixture(scope="module")
def pipe(assets, lora):
    """The LCM-LoRA pipeline as the generation stage loads it (``prompts`` encodes with its text encoder)."""
    return load_lcm_img2img(str(assets[0] / "sd"), lora)


@pytest.fixture(scope="module")
def lcm_run(assets, pipeline_run, lora, tmp_path_factory):
    """The raw generation pass under the LCM-LoRA sampler, on the pipeline run's captions and scores, with the UNet
    calls of the loader's (cached) pipeline counted by a forward hook."""
    from sgid_utils.params.load import load_params

    from .conftest import write_params

    params = load_params(write_params(tmp_path_factory.mktemp("lcm"), *assets, generation={
        "sampler": "lcm", "lcm": {"lora": lora, "num_inference_steps": LCM_STEPS}}))
    copy_stages(pipeline_run, params, "data", "captioning", "similarity")
    pipe = load_lcm_img2img(params.models.diffusion, lora, "cpu", torch.float32)  # the stage's call: its cache entry
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        assert run_stage("generation", params) is not None
    finally:
        hook.remove()
    return params, calls


def test_the_loader_fuses_the_lora_and_uses_lcmscheduler(assets, lora):
    from diffusers import LCMScheduler, PNDMScheduler

    sd = str(assets[0] / "sd")
    lcm, plain = load_lcm_img2img(sd, lora), load_img2img(sd)
    assert isinstance(lcm.scheduler, LCMScheduler) and isinstance(plain.scheduler, PNDMScheduler)
    assert lcm.unet is not plain.unet and not any("lora" in n for n, _ in lcm.unet.named_modules())  # fused, unloaded
    fused = dict(lcm.unet.named_parameters())
    moved = [n for n, p in plain.unet.named_parameters() if not torch.equal(p, fused[n])]
    assert moved and all("attn" in n and n.endswith("weight") for n in moved)  # the attention projections only
    fresh = type(plain.unet).from_pretrained(assets[0] / "sd", subfolder="unet")
    assert all(torch.equal(p, q) for p, q in zip(plain.unet.parameters(), fresh.parameters()))  # the shared one kept


def test_fused_equals_the_lora_applied_unfused(assets, lora, pipe, prompts):
    """fuse_lora then unload_lora_weights keeps the LoRA's effect: the same images as the LoRA layers left in place."""
    from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline

    lcm = pipe
    unfused = StableDiffusionImg2ImgPipeline(**{**load_img2img(str(assets[0] / "sd")).components,
                                                "unet": type(lcm.unet).from_pretrained(assets[0] / "sd",
                                                                                       subfolder="unet"),
                                                "scheduler": LCMScheduler.from_config(lcm.scheduler.config)})
    unfused.load_lora_weights(lora)
    image = Image.new("RGB", (48, 40), (120, 80, 40))
    a = generate_candidates(lcm, *prompts[0], image, 1.2, STRENGTH, LCM_STEPS, seeds_for(0))
    b = generate_candidates(unfused, *prompts[0], image, 1.2, STRENGTH, LCM_STEPS, seeds_for(0))
    for x, y in zip(a, b):
        assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 1


def test_the_stage_runs_three_lcm_steps_per_source(lcm_run):
    params, calls = lcm_run
    manifest = catalog.load(params, "manifest_raw")
    sources = manifest.image_id.nunique()
    assert len(calls) == 3 * sources  # int(10 x 0.3) UNet calls per pipeline call, one call per source on the CPU
    scales = manifest.drop_duplicates("image_id").guidance_scale
    k = params.generation.num_candidates
    assert sorted(calls) == sorted([2 * k if s > 1 else k for s in scales for _ in range(3)])  # CFG pairs above 1


def test_lcm_candidates_differ_from_the_default_samplers(lcm_run, pipeline_run):
    params, _ = lcm_run
    mine = catalog.load(params, "manifest_raw").sort_values(["image_id", "k"])
    plain = catalog.load(pipeline_run, "manifest_raw").sort_values(["image_id", "k"])
    cols = ["image_id", "k", "seed", "prompt", "guidance_scale", "input_width", "input_height"]
    assert mine[cols].reset_index(drop=True).equals(plain[cols].reset_index(drop=True))  # same sources and seeds
    diffs = [np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).mean()
             for a, b in zip(mine.path, plain.path)]
    assert min(diffs) > 1.0


def test_lcm_stage_is_deterministic_resumes_and_batched_matches(make_params, lcm_run, lora):
    first = catalog.load(lcm_run[0], "manifest_raw")
    lcm = {"sampler": "lcm", "lcm": {"lora": lora, "num_inference_steps": LCM_STEPS}}
    for name, generation in (("again", lcm), ("batched", {**lcm, "batch_size": 4})):
        params = make_params(name, generation=generation)
        copy_stages(lcm_run[0], params, "data", "captioning", "similarity")
        run_stage("generation", params)
        for image_id in first.image_id.unique()[::2]:
            (RunDir.of(params).items("generation") / f"{image_id}.json").unlink()
        again = run_stage("generation", params)
        for a, b in zip(sorted(first.path), sorted(again.path)):
            if name == "again":
                assert open(a, "rb").read() == open(b, "rb").read()
            else:  # the batched loop with LCMScheduler's per-step noise, each candidate's from its own generator
                diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
                assert diff.max() <= 2, (a, diff.max())


def test_unreachable_lora_says_what_to_do(assets):
    with pytest.raises(ModelLoadError) as err:
        load_lcm_img2img(str(assets[0] / "sd"), "latent-consistency/no-such-lcm-lora-xyz")
    msg = str(err.value)
    assert "\n" not in msg and "latent-consistency/no-such-lcm-lora-xyz" in msg and "offline" in msg
    assert "generation.lcm.lora" in msg and "generation stage" in msg and "hf download" in msg


def test_bad_settings_get_one_clear_line(make_params):
    with pytest.raises(ParamsError, match=r"leaves no denoising step.*at least 4"):
        make_params("steps", generation={"sampler": "lcm", "lcm": {"num_inference_steps": 3}})
    with pytest.raises(ParamsError, match="max_guidance_scale"):  # 7.5 x f(s*) reaches 9.4
        make_params("scaled", generation={"sampler": "lcm", "guidance": {"mode": "scaled"}})
    with pytest.raises(ParamsError, match="img2img only"):
        make_params("cn", generation={"sampler": "lcm", "generator": "controlnet"})
    with pytest.raises(ParamsError, match="generation.sampler"):
        make_params("typo", generation={"sampler": "lcmm"})
    with pytest.raises(ParamsError, match="num_inference_steps"):  # beyond LCM's 50 original steps
        make_params("long", generation={"sampler": "lcm", "lcm": {"num_inference_steps": 60}})
    assert make_params("ok", generation={"sampler": "lcm", "lcm": {"num_inference_steps": 4}}).generation.steps == 4


def test_largest_guidance_over_every_similarity():
    assert largest_guidance("direct", (-4.0, 2.0, 1.0), 7.5) == pytest.approx(1.25)  # the peak at s* = 0.25
    assert largest_guidance("scaled", (-4.0, 2.0, 1.0), 1.5) == pytest.approx(1.875)
    assert largest_guidance("direct", (1.0, 0.0, 0.5), 7.5) == pytest.approx(1.5)  # convex: at an end
    assert largest_guidance("fixed", (-4.0, 2.0, 1.0), 1.8) == 1.8


def test_the_sampler_is_in_the_fingerprint_only_when_used(make_params, lora):
    plain = make_params("plain")
    other_lcm = make_params("o", generation={"lcm": {"num_inference_steps": 20}})
    lcm = make_params("l", generation={"sampler": "lcm", "lcm": {"lora": lora}})
    assert "sampler" not in fingerprint(plain, "generation")["generation"]  # as every run before samplers
    assert "lcm" not in fingerprint(plain, "generation")["generation"]
    assert fingerprint(plain, "upscaling") == fingerprint(other_lcm, "upscaling")  # unused settings change nothing
    assert fingerprint(lcm, "generation")["generation"]["sampler"] == "lcm"
    assert fingerprint(lcm, "curation") != fingerprint(plain, "curation")  # downstream stages follow
    for name, change in (("s", {"num_inference_steps": 20}), ("g", {"max_guidance_scale": 1.5}),
                         ("id", {"lora": "someone/other-lcm-lora"})):
        other = make_params(name, generation={"sampler": "lcm", "lcm": {"lora": lora, **change}})
        assert fingerprint(other, "generation") != fingerprint(lcm, "generation"), change


def test_the_sampler_names_sgid_as_another_method():
    assert sampler_label("default", 50, 0.3) == "SGID"
    assert sampler_label("lcm", 10, 0.3) == "SGID (LCM-LoRA, 3 steps)"
    assert sampler_label("lcm", 8, 0.3) == "SGID (LCM-LoRA, 2 steps)"


def test_notebook_08_plots_the_lcm_set_beside_sgids(make_params, pipeline_run, lora):
    """A methods run with an LCM-LoRA variant: its curated set is a point of its own on the consistency-diversity
    axes, measured as SGID's (the curated set's CLIP embeddings)."""
    from sgid_utils.reporting.comparison import sampler_variants
    from sgid_utils.reporting.method_sets import methods_set_metrics

    change = {"generation.sampler": "lcm", "generation.lcm.lora": lora}
    base = make_params("base", ablations=[{"name": "lcm", "set": change}])
    copy_stages(pipeline_run, base, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    assert sampler_variants(base, "curated") == []  # not generated yet: no row
    variant = variant_params(base, "lcm", change)
    copy_stages(pipeline_run, variant, "data", "captioning", "similarity")
    for stage in ("generation", "upscaling", "curation"):
        run_stage(stage, variant)
    sets = methods_set_metrics(base).set_index("set")
    assert {"SGID", "SGID (LCM-LoRA, 3 steps)"} <= set(sets.index)
    assert sets.loc["SGID (LCM-LoRA, 3 steps)", "images"] == sets.loc["SGID", "images"]
    assert sets.loc["SGID (LCM-LoRA, 3 steps)", "distance to source"] != sets.loc["SGID", "distance to source"]


def test_the_comparison_shows_the_lcm_variant_as_a_method_of_its_own(make_params, pipeline_run, lora):
    """A methods run with an LCM-LoRA variant (as params/pets_methods.yaml declares it): its SGID gets its own row,
    named by its sampler, with the device hours of its own generation stages (captions and scores linked)."""
    from sgid_utils.core.provenance import stage_seconds
    from sgid_utils.core.runner import run_all
    from sgid_utils.reporting.comparison import HOURS, comparison_table
    from sgid_utils.stages.ablations import run as run_ablations

    change = {"generation.sampler": "lcm", "generation.lcm.lora": lora, "training.methods": ["baseline", "sgid"]}
    params = make_params("cmp", training={"methods": ["baseline", "sgid"], "sgid_proportions": [1.0], "seeds": [0]},
                         ablations=[{"name": "lcm", "label": "LCM-LoRA sampler", "set": change}])
    copy_stages(pipeline_run, params, "data", "captioning", "similarity", "generation", "upscaling", "curation")
    run_all(params)
    run_ablations(params)
    variant = variant_params(params, "lcm", change)
    run = RunDir.of(variant)
    assert run.stage("captioning").is_symlink() and not run.stage("generation").is_symlink()
    table = comparison_table(params, catalog.load(params, "training_results")).set_index("Method")
    assert {"SGID (100%)", "SGID (LCM-LoRA, 3 steps) (100%)"} <= set(table.index)
    row = table.loc["SGID (LCM-LoRA, 3 steps) (100%)"]
    assert row.Recipe == "equal epochs"
    own = sum(stage_seconds(variant, s)[0] for s in ("captioning", "similarity", "generation", "upscaling", "curation"))
    assert row[HOURS] == pytest.approx(own / 3600) and own > 0


def test_preflight_checks_the_lora_where_a_run_or_variant_uses_it(make_params, lora):
    from sgid_utils.preflight.checks import checks

    def lora_checks(params):
        return [c for c in checks(params) if c.name == "generation.lcm.lora"]

    assert lora_checks(make_params("plain")) == []
    (found,) = lora_checks(make_params("own", generation={"sampler": "lcm", "lcm": {"lora": lora}}))
    assert found.ok and lora in found.detail
    change = {"generation.sampler": "lcm", "generation.lcm.lora": "latent-consistency/no-such-lcm-lora-xyz"}
    (missing,) = lora_checks(make_params("variant", ablations=[{"name": "lcm", "set": change}]))
    assert not missing.ok and "HF_HUB_OFFLINE" in missing.detail and "hf download" in missing.fix
