"""The baseline feature f0 = E_z[d(z)] and its cache."""

import torch

from regprim import load_model
from regprim.solvers.problem.baseline import baseline, cache_path, compute_baseline


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


def test_a_model_with_other_weights_gets_its_own_baseline(tmp_path):
    """A user's model retrained (or re-seeded) under the same name: a new f0, never the cached
    one of the old weights."""
    from torch import nn

    from regprim import split_sequential

    def build(seed):
        torch.manual_seed(seed)
        seq = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3 * 8 * 8), nn.Tanh())
        return split_sequential(seq, "1", code_dim=4, name="custom", code_to_input=lambda z: z)

    old, new = build(0), build(1)
    assert old.fingerprint() != new.fingerprint() and old.fingerprint() == build(0).fingerprint()
    assert cache_path(old, 50, 1) != cache_path(new, 50, 1)
    f_old, f_new = baseline(old, 50, 1), baseline(new, 50, 1)
    torch.testing.assert_close(f_new, compute_baseline(new, 50, 1))
    assert not torch.allclose(f_old, f_new)


def test_generators_without_modules_do_not_share_a_baseline():
    """A split with no torch modules (fixed tensors in d and g) still gets a fingerprint of its
    own from what d computes: two of one name never share an f0."""
    from regprim import SplitGenerator
    from regprim.generators.base import gaussian_sampler

    class Fixed(SplitGenerator):
        def __init__(self, scale: float) -> None:
            super().__init__("custom", "f", ("f",), 3, gaussian_sampler(3))
            self.scale = scale

        def d(self, code):
            return self.scale * code.abs()

        def g(self, f, code):
            return f[:, None, :, None].expand(-1, 3, 3, 3)

    a, b = Fixed(1.0), Fixed(2.0)
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == Fixed(1.0).fingerprint()
    torch.testing.assert_close(baseline(b, 20, 1), 2 * baseline(a, 20, 1))
