import subprocess
import sys

import torch

from sgid_utils.core.seeding import derive_seed, draw_seed, torch_rng


def test_seed_depends_on_every_part_and_nothing_else():
    base = derive_seed(0, "train_000_00001", 0)
    assert base == derive_seed(0, "train_000_00001", 0)
    assert len({base, derive_seed(1, "train_000_00001", 0), derive_seed(0, "train_000_00002", 0),
                derive_seed(0, "train_000_00001", 1), derive_seed(0, "train_000_00001", 0, purpose="x")}) == 5
    assert 0 <= base < 2**63


def test_seed_is_stable_across_processes():
    code = "from sgid_utils.core.seeding import derive_seed; print(derive_seed(7, 'img', 2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert int(out) == derive_seed(7, "img", 2)


def test_generator_reproduces_noise():
    assert torch.equal(torch.randn(4, generator=torch_rng(5)), torch.randn(4, generator=torch_rng(5)))


def test_draw_zero_is_the_run_seed_and_every_other_draw_a_new_seed(make_params):
    """run.draw 0 gives exactly the seeds every run had before the key existed (run.seed itself); draws 1, 2 and another
    run seed's draw 1 are all different."""
    seven = make_params("s7", run={"seed": 7})
    assert draw_seed(seven) == 7
    draws = {draw_seed(make_params(f"d{d}", run={"seed": 7, "draw": d})) for d in (1, 2)}
    draws.add(draw_seed(make_params("s8", run={"seed": 8, "draw": 1})))
    assert len(draws | {7}) == 4 and all(0 <= d < 2**63 for d in draws)


def test_the_draw_reaches_captions_generation_and_curation_not_the_data_or_the_baselines(make_params):
    from sgid_utils.core.fingerprints import baseline_fingerprint, fingerprint
    from sgid_utils.core.registry import get

    zero, one = make_params("f0"), make_params("f1", run={"draw": 1})
    assert fingerprint(zero, "data") == fingerprint(one, "data")
    assert baseline_fingerprint(zero) == baseline_fingerprint(one)  # the Baselines are shared
    for stage in ("captioning", "similarity", "generation", "upscaling", "curation", "training"):
        assert fingerprint(zero, stage) != fingerprint(one, stage), stage
        assert "run.draw" not in fingerprint(zero, stage)  # draw 0: records made before the key stay valid
    assert all("run.draw" in get(s).keys for s in ("captioning", "generation", "upscaling", "curation"))
    assert not any("run.draw" in get(s).keys for s in ("data", "training"))
    equal = make_params("fe", training={"equal_steps": True})
    assert fingerprint(equal, "training") != fingerprint(zero, "training")
    assert "equal_steps" not in fingerprint(zero, "training")["training"]
    assert baseline_fingerprint(equal) == baseline_fingerprint(zero)
