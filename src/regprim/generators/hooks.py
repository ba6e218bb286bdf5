"""Any ``nn.Module`` cut at a named submodule by forward hooks, and :func:`split_at`, which
picks the cheapest cut a model allows.

:class:`HookSplit`: ``d`` runs the model and captures the activation of the submodule, ``g``
runs the whole model again and substitutes it. That costs a full forward per evaluation; prefer
:func:`regprim.generators.base.split_sequential` where the model allows it. Hooks are always
removed, also when the forward raises; a submodule that returns a tuple is cut at one of its
entries, one called several times per forward at one of its calls, and a hook that never fired is
an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from regprim.generators.base import (
    CodeSampler,
    ModelError,
    SplitGenerator,
    gaussian_sampler,
    split_sequential,
)


class HookSplit(SplitGenerator):
    """Any module cut at a named submodule by forward hooks (a full forward per call of ``g``).

    ``forward(model, code)`` runs the model on codes. Fixed extra inputs (e.g. StyleGAN noise)
    must be fixed inside ``forward`` so that ``g`` sees the same ones as ``d``.

    Args:
        output_index: for a submodule that returns a tuple or list, the position of the
            feature in it (the other entries pass through unchanged); None for a tensor.
        call: for a submodule called several times per forward (a shared block, a U-Net
            block at every step), which call (0 = the first) is the cut; the other calls run
            as usual. A forward that never reaches that call is an error that says how often
            the submodule ran.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        forward: Callable[[nn.Module, Tensor], Tensor],
        layers: Sequence[str] | None = None,
        output_index: int | None = None,
        call: int = 0,
        **kwargs,
    ) -> None:
        valid = (
            tuple(layers) if layers is not None else tuple(n for n, _ in model.named_modules() if n)
        )
        super().__init__(layer=layer, layers=valid, sees_code=True, **kwargs)
        if layer not in valid:
            raise ValueError(unknown_layer(layer, valid, model, self.name))
        if call < 0:
            msg = f"call={call} must be >= 0 (0 = the first time {layer!r} runs in a forward)"
            raise ValueError(msg)
        self.model = model
        self.module = model.get_submodule(layer)
        self.forward = forward
        self.output_index, self.call = output_index, call

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def _feature(self, out: object) -> Tensor:
        """The feature inside a submodule's output (the tuple entry ``output_index``)."""
        if self.output_index is None:
            if not isinstance(out, Tensor):
                msg = (
                    f"layer {self.layer!r} returns a {type(out).__name__}, not a tensor; "
                    "pass output_index=i to cut at its i-th entry"
                )
                raise ModelError(msg)
            return out
        if not isinstance(out, tuple | list) or not -len(out) <= self.output_index < len(out):
            msg = (
                f"output_index={self.output_index} does not index the output of layer "
                f"{self.layer!r} (a {type(out).__name__}); use None for a tensor output"
            )
            raise ModelError(msg)
        return out[self.output_index]

    def _run_hooked(self, code: Tensor, on_cut: Callable[[object], object]) -> Tensor:
        """Run the model with ``on_cut`` applied to the output of the cut call of the layer;
        hooks are removed whatever happens, and a cut call that never came is an error."""
        calls = 0

        def hook(_m: nn.Module, _i: object, out: object) -> object:
            nonlocal calls
            calls += 1
            return on_cut(out) if calls - 1 == self.call else None

        handle = self.module.register_forward_hook(hook)
        try:
            result = self.forward(self.model, code)
        finally:
            handle.remove()
        if calls <= self.call:
            msg = (
                f"the forward hook on layer {self.layer!r} fired {calls} time(s), so call "
                f"{self.call} never happened; check the layer name and forward(), or use a "
                f"call below {calls}"
            )
            raise RuntimeError(msg)
        return result

    def d(self, code: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def capture(out: object) -> None:
            captured.append(self._feature(out))

        self._run_hooked(code, capture)
        return captured[0]

    def g(self, f: Tensor, code: Tensor) -> Tensor:
        if code.shape[0] != f.shape[0]:
            code = code.expand(f.shape[0], *code.shape[1:])

        def substitute(out: object) -> object:
            feature = self._feature(out)
            if feature.shape != f.shape:
                msg = (
                    f"feature shape {tuple(f.shape)} does not match layer output "
                    f"{tuple(feature.shape)}"
                )
                raise ValueError(msg)
            if self.output_index is None:
                return f
            parts = list(out)  # type: ignore[arg-type]
            parts[self.output_index] = f
            return type(out)(parts)  # type: ignore[call-arg]

        return self._run_hooked(code, substitute)


def unknown_layer(layer: str, valid: Sequence[str], model: nn.Module, name: str) -> str:
    """The error for a layer not in ``valid``: the nearest names and the model's top level
    (a module's full list of submodules runs to hundreds of names)."""
    near = difflib.get_close_matches(layer, valid, n=5, cutoff=0.5)
    top = [n for n, _ in model.named_children()]
    hint = f"nearest: {near}; " if near else ""
    return (
        f"unknown layer {layer!r} for model {name!r}; {hint}its top-level modules: {top} "
        f"({len(valid)} layers in all: [n for n, _ in model.named_modules()])"
    )


def split_at(
    model: nn.Module,
    layer: str,
    *,
    code_dim: int,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
    name: str = "custom",
    sampler: CodeSampler | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> SplitGenerator:
    """Cut ``model`` at the module named ``layer``, by the cheapest means it allows.

    An ``nn.Sequential`` cut at one of its children with no ``forward`` given is sliced
    (:func:`split_sequential`: ``g`` runs only the layers after the cut). Anything else is cut
    with hooks (:class:`HookSplit`: a full forward per evaluation); ``forward(model, code)``
    then runs the model on codes (default: ``model(code)``).
    """
    children = [n for n, _ in model.named_children()]
    if isinstance(model, nn.Sequential) and forward is None and layer in children[:-1]:
        return split_sequential(
            model, layer, name=name, code_dim=code_dim, sampler=sampler, value_range=value_range
        )
    return HookSplit(
        model,
        layer,
        forward or (lambda m, z: m(z)),
        name=name,
        code_dim=code_dim,
        sampler=sampler or gaussian_sampler(code_dim),
        value_range=value_range,
    )
