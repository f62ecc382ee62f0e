import pytest
import torch
from compel import PromptParser

from sgid_utils.config.schema import GenerationParams
from sgid_utils.method.prompts import build_prompt, escape_for_compel, plain_prompt


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
    from sgid_utils.method.generation import PromptEncoder
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
