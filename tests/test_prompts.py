import pytest
import torch
from compel import PromptParser

from sgid_utils.augment.prompts import build_prompt, escape_for_compel, plain_prompt
from sgid_utils.params.schema import GenerationParams


def fragments(prompt: str) -> list[tuple[str, float]]:
    conj = PromptParser().parse_conjunction(prompt)
    return [(f.text, round(f.weight, 6)) for p in conj.prompts for f in p.children]


def test_prompt_text_and_weights():
    gen = GenerationParams()
    caption = "a fluffy white dog laying in the grass with a stuffed animal"
    assert plain_prompt(caption, "Great Pyrenees", gen) == f"{caption}. A picture of Great Pyrenees"
    assert fragments(build_prompt(caption, "Great Pyrenees", gen)) == [
        (caption, 0.9), (". A picture of", 1.0), ("Great Pyrenees", 1.5)]


@pytest.mark.parametrize(
    ("caption", "literal"),
    [
        ("a dog ) with a toy", "a dog ) with a toy"),
        ("a (small) cat", "a (small) cat"),
        ("a dog+ on grass", "a dog on grass"),
        ("a cat - on a bed --", "a cat on a bed"),
        ("a well-known breed", "a well-known breed"),
        ("back\\slash (x", "back slash (x"),
    ],
)
def test_caption_syntax_cannot_change_the_weights(caption, literal):
    frags = fragments(build_prompt(caption, "Maine Coon", GenerationParams()))
    assert frags == [(literal, 0.9), (". A picture of", 1.0), ("Maine Coon", 1.5)]
    assert "\\" not in escape_for_compel("a\\b")


def test_weights_reach_the_embeddings(assets):
    from sgid_utils.augment.generation import PromptEncoder
    from sgid_utils.models.loading import load_img2img

    models, _ = assets
    encode = PromptEncoder(load_img2img(str(models / "sd")))
    caption, label = "a dog on grass", "Great Pyrenees"
    weighted, _ = encode(build_prompt(caption, label, GenerationParams()))
    unit, _ = encode(build_prompt(caption, label, GenerationParams(caption_weight=1.0, label_weight=1.0)))
    label_only, _ = encode(build_prompt(caption, label, GenerationParams(caption_weight=1.0)))
    again, _ = encode(build_prompt(caption, label, GenerationParams()))
    assert torch.equal(weighted, again)
    assert not torch.allclose(weighted, unit, atol=1e-4)
    # Each weight moves the embeddings on its own: label weight alone, then the caption weight on top.
    assert not torch.allclose(label_only, unit, atol=1e-4)
    assert not torch.allclose(label_only, weighted, atol=1e-4)


def test_ablation_prompts_are_unweighted_label_or_caption():
    caption = "a dog ) on grass"
    assert fragments(build_prompt(caption, "Great Pyrenees", GenerationParams(prompt="label_only"))) == [
        ("A picture of Great Pyrenees", 1.0)]
    assert fragments(build_prompt(caption, "Great Pyrenees", GenerationParams(prompt="caption_only"))) == [
        ("a dog ) on grass", 1.0)]


@pytest.mark.parametrize("negative", ["", "blurry, (low quality)1.2"])
def test_chunk_encoding_equals_compels_per_prompt_pairs(assets, negative):
    """``PromptEncoder.many`` (the negative encoded once per run) gives compel's pair call's embeddings, also for a
    prompt longer than CLIP's 77 tokens, whose negative compel pads to its length."""
    from sgid_utils.augment.generation import PromptEncoder
    from sgid_utils.models.loading import load_img2img

    models, _ = assets
    encode = PromptEncoder(load_img2img(str(models / "sd")))
    gen = GenerationParams()
    long_caption = " ".join(["a fluffy white dog with a long tail sitting on green grass"] * 3)
    prompts = [build_prompt(c, label, gen) for c, label in
               [("a dog on grass", "pug"), (long_caption, "Great Pyrenees"), ("a red flower", "rose")]]
    pairs = encode.many(prompts, negative)
    assert pairs[1][0].shape[1] > pairs[0][0].shape[1] == 77  # the long prompt is not truncated
    for prompt, (embeds, negative_embeds) in zip(prompts, pairs):
        ref, ref_negative = encode(prompt, negative)
        assert embeds.shape == ref.shape and negative_embeds.shape == ref_negative.shape
        torch.testing.assert_close(embeds, ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(negative_embeds, ref_negative, atol=1e-6, rtol=1e-5)
    assert list(encode.negatives) == [negative]  # encoded once, reused for every prompt
