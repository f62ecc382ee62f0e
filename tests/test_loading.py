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


def test_the_smoke_profile_knows_every_tiny_model_family():
    """models.tiny decides what to build without importing the builders (seconds of diffusers and timm imports)."""
    from sgid_utils.models import builders, tiny

    assert tiny.FAMILIES == tuple(builders._TINY_SAVERS)
