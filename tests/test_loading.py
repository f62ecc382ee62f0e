"""Every model loader turns an unreachable id into one message saying what to do (offline here: nothing reachable)."""

import pytest

from sgid_utils.models.loading import (
    ModelLoadError,
    create_classifier,
    load_captioner,
    load_clip,
    load_img2img,
)


@pytest.mark.parametrize("loader", [load_captioner, load_clip, load_img2img])
def test_unreachable_model_ids_say_what_to_do(loader):
    with pytest.raises(ModelLoadError) as err:
        loader("Salesforce/no-such-model-xyz")
    msg = str(err.value)
    assert ("Salesforce/no-such-model-xyz" in msg and "offline" in msg and "params/smoke.yaml" in msg
            and "models." in msg)


def test_unreachable_classifier_says_what_to_do():
    with pytest.raises(ModelLoadError, match="vit_base_patch16_224.orig_in21k.*offline"):
        create_classifier("vit_base_patch16_224.orig_in21k", 3)


def test_every_models_entry_has_a_tiny_model():
    """models.tiny builds one tiny model per models.* field, deciding which without importing the builders (seconds
    of diffusers and timm imports): the builders must know every field."""
    from sgid_utils.models import builders
    from sgid_utils.params.schema import ModelParams

    assert set(ModelParams.model_fields) == set(builders._TINY_SAVERS)  # each is seeded on its own: order is free
