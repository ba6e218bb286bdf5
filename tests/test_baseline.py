"""The baseline feature f0 = E_z[d(z)] and its cache."""

import torch

from regprim import load_model
from regprim.baseline import baseline, cache_path, compute_baseline


def test_cache_key_holds_every_setting():
    gen = load_model("planted")
    paths = {cache_path(gen, 100, 1), cache_path(gen, 100, 2), cache_path(gen, 50, 1)}
    assert len(paths) == 3
    a, b = baseline(gen, 100, 1), baseline(gen, 100, 2)
    assert not torch.equal(a, b)
    assert torch.equal(baseline(gen, 100, 1), a)  # from the cache, the same


def test_baseline_is_the_mean_feature():
    gen = load_model("planted")
    codes = gen.sample_codes(64, 3)
    torch.testing.assert_close(compute_baseline(gen, 64, 3), gen.d(codes).mean(0))
