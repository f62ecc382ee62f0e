import subprocess
import sys

import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.runner import run_stage


def test_captions_per_image_with_decoding_and_rank(pipeline_run):
    caps = pd.read_parquet(catalog.path(RunDir.of(pipeline_run), "captions"))
    images = pd.read_parquet(catalog.path(RunDir.of(pipeline_run), "images"))
    assert set(caps.image_id) == set(images[images.split == "train"].image_id)
    per = caps.groupby(["image_id", "decoding"]).size().unstack()
    assert (per["nucleus"] == 3).all() and (per["beam"] == 2).all()
    assert sorted(caps[caps.decoding == "nucleus"]["rank"].unique()) == [0, 1, 2]
    assert caps.caption.str.len().gt(0).any()
    # Duplicates are kept and counted: each repeat of an image's caption (not its first copy) is marked.
    assert (caps.duplicate == caps.duplicated(["image_id", "caption"])).all()
    assert (caps.groupby("image_id").caption.nunique() + caps.groupby("image_id").duplicate.sum()
            == caps.groupby("image_id").size()).all()


def test_an_older_captions_table_gets_its_duplicates_marked_on_load(tmp_path):
    """A captions table an older version wrote (without ``duplicate``) reads as today's in the similarity stage: the
    method code that defines the column registers the catalog's upgrade (core imports nothing above it), and a
    fresh process that imports only that stage has it."""
    table = pd.DataFrame({"image_id": ["a", "a", "a", "b"], "method": ["nucleus", "nucleus", "beam", "nucleus"],
                          "rank": [0, 1, 0, 0], "caption": ["a dog", "a dog", "a dog", "a dog"]})
    run = RunDir(tmp_path / "run", tmp_path / "reports")
    catalog.path(run, "captions").parent.mkdir(parents=True)
    table.to_parquet(catalog.path(run, "captions"))
    code = ("from pathlib import Path; import sgid_utils.stages.similarity; from sgid_utils.core import catalog; "
            "from sgid_utils.core.rundir import RunDir; "
            f"print(catalog.load(RunDir(Path({str(run.root)!r}), Path({str(run.reports)!r})), 'captions')"
            ".duplicate.tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[False, True, True, False]"


def test_captions_do_not_depend_on_batch_size_or_resuming(make_params, monkeypatch):
    one = run_stage("captioning", make_params("a", captioning={"batch_size": 1}))
    params = make_params("b", captioning={"batch_size": 4})
    monkeypatch.setenv("SGID_SHARD", "0/3")
    assert run_stage("captioning", params) is None  # a first, partial run (a third of the images, as if killed)
    monkeypatch.delenv("SGID_SHARD")
    items = RunDir.of(params).items("captioning")
    before = {p.name: p.stat().st_mtime_ns for p in items.glob("*.json")}
    assert 0 < len(before) < one.image_id.nunique()
    four = run_stage("captioning", params)
    assert {p.name: p.stat().st_mtime_ns for p in items.glob("*.json") if p.name in before} == before  # not redone
    pd.testing.assert_frame_equal(one.reset_index(drop=True), four.reset_index(drop=True))


def test_seeded_nucleus_sampler_draws_from_the_nucleus_in_proportion():
    import torch

    from sgid_utils.stages.captioning import SeededNucleusSampler

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])  # top_p 0.7: nucleus {0, 1}, renormalised to 0.625 / 0.375
    rows = 4000
    uniforms = torch.rand(rows, 1, generator=torch.Generator().manual_seed(0))
    sampler = SeededNucleusSampler(0.7, uniforms)
    out = sampler(torch.zeros(rows, 3, dtype=torch.long), probs.log().expand(rows, -1).clone())
    chosen = out.argmax(-1)
    assert torch.isinf(out).sum(-1).eq(3).all()  # exactly one allowed token per row
    counts = torch.bincount(chosen, minlength=4).float() / rows
    assert counts[2:].sum() == 0
    assert abs(counts[0].item() - 0.625) < 0.03  # binomial sd ~0.008
    assert torch.equal(chosen, (uniforms[:, 0] >= 0.625).long())  # inverse CDF, row by row


def test_seeded_nucleus_sampler_refuses_more_steps_than_drawn():
    import pytest
    import torch

    from sgid_utils.stages.captioning import SeededNucleusSampler

    sampler = SeededNucleusSampler(0.9, torch.rand(2, 1))
    sampler(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="beyond"):
        sampler(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 5))


def test_non_finite_logits_are_raised_after_the_call_not_per_step():
    import pytest
    import torch

    from sgid_utils.stages.captioning import SeededNucleusSampler

    sampler = SeededNucleusSampler(0.9, torch.rand(2, 3))
    sampler(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5))
    sampler(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0.0] * 5, [float("nan")] * 5]))  # no raise mid-call
    with pytest.raises(ValueError, match="not finite"):
        sampler.check()


def test_one_vision_pass_gives_blips_own_captions(assets):
    """Both decodings, started from one ``image_embeddings`` call, give what BLIP's ``generate`` (its vision encoder run
    per call) gives, token for token; the encoder runs once per batch."""
    import torch

    from sgid_utils.core.images import load_image
    from sgid_utils.models.loading import load_captioner
    from sgid_utils.params.schema import CaptioningParams
    from sgid_utils.stages.captioning import SeededNucleusSampler, caption_batch, pixel_inputs

    models, data = assets
    model, processor = load_captioner(str(models / "blip"), "cpu", torch.float32)
    cfg = CaptioningParams(num_nucleus=3, num_beam=2, num_beams=2, max_new_tokens=8)
    images = [load_image(p) for p in sorted((data / "train").rglob("*.jpg"))[:3]]
    seeds = [11, 12, 13]
    calls = []
    hook = model.vision_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        nucleus, beam = caption_batch(model, processor, images, cfg, seeds)
    finally:
        hook.remove()
    assert len(calls) == 1

    inputs = pixel_inputs(model, processor, images)
    uniforms = torch.cat([torch.rand(3, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    sampled = model.generate(**inputs, do_sample=True, num_beams=1, top_k=0, top_p=1.0, temperature=1.0,
                             num_return_sequences=3, max_new_tokens=8,
                             logits_processor=[SeededNucleusSampler(cfg.top_p, uniforms)])
    beams = model.generate(**inputs, num_beams=2, num_return_sequences=2, max_new_tokens=8, do_sample=False)
    texts = [" ".join(t.split()) for t in processor.batch_decode(sampled, skip_special_tokens=True)]
    assert nucleus == [texts[i * 3:(i + 1) * 3] for i in range(3)]
    texts = [" ".join(t.split()) for t in processor.batch_decode(beams, skip_special_tokens=True)]
    assert beam == [texts[i * 2:(i + 1) * 2] for i in range(3)]
