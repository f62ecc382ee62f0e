"""DA-Fusion: textual inversion on the tiny Stable Diffusion learns its token and nothing else, the strengths are
drawn per synthetic image from its seed, the replacement sampler replaces at rate p, and the stages and training
methods run in the test chain."""

from __future__ import annotations

import pytest
import torch

from sgid_utils.augment.inversion import InversionSettings, batch_loss, learn_token, own_text_encoder
from sgid_utils.augment.replacement import ReplacementSampler, synthetic_indices
from sgid_utils.core import catalog
from sgid_utils.core.images import load_image
from sgid_utils.models.loading import load_img2img
from sgid_utils.stages.da_fusion import seed_of, strength_of

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny_pipe(assets):
    return load_img2img(str(assets[0] / "sd"))


def test_textual_inversion_learns_the_token_and_only_the_token(tiny_pipe, assets):
    from diffusers import DDPMScheduler

    images = [load_image(p) for p in _files(assets[1] / "train")[:4]]
    noise = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    tokenizer, text_encoder = own_text_encoder(tiny_pipe)
    settings = InversionSettings(steps=30, batch_size=4, lr=0.05, weight_decay=0.0, flip_p=0.0, resolution=64,
                                 initializer_token="the")
    unet_before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}

    def fixed_loss() -> float:  # the same images, noise, timesteps and templates before and after
        with torch.no_grad():
            return float(batch_loss(tokenizer, text_encoder, tiny_pipe.vae, tiny_pipe.unet, noise, images, "<dog>",
                                    settings, torch.Generator().manual_seed(7)))

    from sgid_utils.augment.inversion import add_token

    token_id = add_token(tokenizer, text_encoder, "<dog>", "the")
    before_rows = text_encoder.get_input_embeddings().weight.detach().clone()
    before = fixed_loss()
    embedding, losses = learn_token(tokenizer, text_encoder, tiny_pipe.vae, tiny_pipe.unet, noise, images, "<dog>",
                                    settings, seed=0)
    after_rows = text_encoder.get_input_embeddings().weight.detach()
    assert fixed_loss() < before and len(losses) == 30
    others = torch.arange(len(tokenizer)) != token_id
    assert torch.equal(after_rows[others], before_rows[others])  # every other embedding fixed
    assert (embedding - before_rows[token_id]).norm() > 1e-3  # the token moved
    assert torch.equal(embedding, after_rows[token_id])
    for k, v in tiny_pipe.unet.state_dict().items():  # the UNet is only read
        assert torch.equal(v, unet_before[k]), k
    assert "<dog>" not in tiny_pipe.tokenizer.get_vocab()  # the cached pipeline is left alone


def test_a_class_token_is_the_same_whatever_was_learned_before(tiny_pipe, assets):
    from diffusers import DDPMScheduler

    images = [load_image(p) for p in _files(assets[1] / "train")[:2]]
    noise = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    settings = InversionSettings(3, 2, 0.01, 0.01, 0.5, 64, "the")
    alone = learn_token(*own_text_encoder(tiny_pipe), tiny_pipe.vae, tiny_pipe.unet, noise, images, "<b>", settings, 5)
    tokenizer, text_encoder = own_text_encoder(tiny_pipe)
    learn_token(tokenizer, text_encoder, tiny_pipe.vae, tiny_pipe.unet, noise, images, "<a>", settings, 9)
    after = learn_token(tokenizer, text_encoder, tiny_pipe.vae, tiny_pipe.unet, noise, images, "<b>", settings, 5)
    assert torch.equal(alone[0], after[0]) and alone[1] == after[1]


def test_strengths_are_drawn_per_synthetic_image_from_its_seed(pipeline_run):
    table = catalog.load(pipeline_run, "da_fusion_images")
    d = pipeline_run.da_fusion
    assert (table.groupby("image_id").m.count() == d.num_synthetic).all()
    assert list(table.seed) == [seed_of(pipeline_run, i, m) for i, m in zip(table.image_id, table.m)]
    assert list(table.strength) == [strength_of(s, d.strengths) for s in table.seed]
    assert table.strength.nunique() > 1 and set(table.strength) <= set(d.strengths)
    assert (table.prompt == [f"a photo of a <{c.replace(' ', '_')}>" for c in table.class_name]).all()
    # over many seeds, each strength about a quarter of the time
    draws = [strength_of(seed_of(pipeline_run, f"img{i}", 0), d.strengths) for i in range(4000)]
    for s in d.strengths:
        assert abs(draws.count(s) / len(draws) - 0.25) < 0.03


def test_the_sampler_replaces_at_rate_p_over_an_epoch():
    n, m, p = 4000, 3, 0.5
    real = [f"r{i}" for i in range(n)]
    synthetic_of = synthetic_indices(real, [r for r in real for _ in range(m)], n)
    sampler = ReplacementSampler(n, synthetic_of, p, torch.Generator().manual_seed(0))
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == n
    replaced = [i for i in epoch if i >= n]
    assert abs(len(replaced) / n - p) < 0.03
    owners = {j: i for i, js in enumerate(synthetic_of) for j in js}
    kept = {i for i in epoch if i < n}
    assert not kept & {owners[j] for j in replaced}  # each real image once: itself or one of its own
    assert len(kept) + len(replaced) == n
    assert {(j - n) % m for j in replaced} == set(range(m))  # every synthetic image can be drawn
    assert all(i < n for i in ReplacementSampler(n, synthetic_of, 0.0, torch.Generator().manual_seed(0)))


def test_da_fusion_trains_both_ways_and_each_token_learned(pipeline_run):
    results = catalog.load(pipeline_run, "training_results").set_index("config")
    tokens = catalog.load(pipeline_run, "class_tokens")
    assert (tokens.moved > 0).all() and (tokens.steps == pipeline_run.da_fusion.inversion_steps).all()
    real = int(results.loc["baseline_seed0", "train_images"])
    assert results.loc["daf100_seed0", "generated_images"] == real  # one per real image, at 100 %
    assert results.loc["dafr_seed0", "generated_images"] == real * pipeline_run.da_fusion.num_synthetic
    assert results.loc["dafr_seed0", "steps"] == results.loc["baseline_seed0", "steps"]  # an epoch = the real images
    table = catalog.load(pipeline_run, "comparison")
    own = table[table.Method == "DA-Fusion (its recipe)"].iloc[0]
    assert own["Synthetic per real"] == pipeline_run.da_fusion.num_synthetic and own.Recipe.startswith("its own")
