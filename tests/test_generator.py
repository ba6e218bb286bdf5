"""Split generators: HookSplit on modules that return tuples and blocks called more than once."""

import pytest
import torch
from torch import nn

from regprim import HookSplit, split_at


class Block(nn.Module):
    """Returns ``(features, a side output)``, as many U-Net and transformer blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, h):
        out = torch.relu(self.conv(h))
        return out, out.mean()


class TinyUNet(nn.Module):
    """One shared block called twice per forward (as a diffusion U-Net calls its blocks at each
    step), with a skip connection around both calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 4 * 4 * 4)
        self.block = Block()
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, z):
        h = self.stem(z).view(-1, 4, 4, 4)
        a, _ = self.block(h)
        b, _ = self.block(a)
        return torch.tanh(self.head(torch.cat([a, b], 1)))


def split(call: int, output_index: int | None = 0) -> HookSplit:
    return HookSplit(
        TinyUNet(),
        "block",
        lambda m, z: m(z),
        output_index=output_index,
        call=call,
        name="unet",
        code_dim=4,
        sampler=lambda c, rng, _: torch.randn(c, 4, generator=rng),
    )


@pytest.mark.parametrize("call", [0, 1])
def test_a_block_called_twice_is_cut_at_the_chosen_call(call):
    gen = split(call)
    model = gen.model
    code = gen.sample_codes(2, 0)
    with torch.no_grad():
        f = gen.d(code)
        h = model.stem(code).view(-1, 4, 4, 4)
        a = model.block(h)[0]
        want = a if call == 0 else model.block(a)[0]
        torch.testing.assert_close(f, want)  # d captured that call, not the other one
        torch.testing.assert_close(gen.g(f, code), model(code))
        # substituting only the chosen call: zero at call 1 leaves a (call 0) untouched
        zero = gen.g(torch.zeros_like(f), code)
        if call == 1:
            expected = torch.tanh(model.head(torch.cat([a, torch.zeros_like(a)], 1)))
        else:
            b = model.block(torch.zeros_like(a))[0]
            expected = torch.tanh(model.head(torch.cat([torch.zeros_like(a), b], 1)))
        torch.testing.assert_close(zero, expected)
    assert not model.block._forward_hooks  # hooks are gone after every call


def test_a_call_that_never_happens_is_a_clear_error_and_leaves_no_hook():
    gen = split(call=2)
    with pytest.raises(RuntimeError, match="fired 2 time\\(s\\), so call 2 never happened"):
        gen.d(gen.sample_codes(1, 0))
    assert not gen.model.block._forward_hooks


def test_a_tuple_output_without_an_index_says_how_to_cut_it():
    gen = split(call=0, output_index=None)
    with pytest.raises(TypeError, match="returns a tuple, not a tensor; pass output_index"):
        gen.d(gen.sample_codes(1, 0))
    assert not gen.model.block._forward_hooks


def test_a_bad_layer_on_a_hooked_model_names_the_nearest_and_the_top_level():
    """A U-Net has hundreds of submodules: the error names a few, not all of them."""
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(*[nn.Linear(2, 2) for _ in range(100)]))
    model.add_module("decoder", nn.Linear(2, 2))
    with pytest.raises(ValueError) as err:
        split_at(model, "encoder.5O", code_dim=2, forward=lambda m, z: m(z))
    msg = str(err.value)
    assert "nearest: ['encoder.5'" in msg and "['encoder', 'decoder']" in msg
    assert len(msg) < 400
