"""A finished run as a result object: settings, headline numbers, tensors, and what to do with
them (rank components, reconstruct cells, rebuild the generator).

:func:`regprim.explain` returns a :class:`Run`; :func:`regprim.load_run` reads one back from its
folder (format: docs/run-folder.md, owned by :mod:`regprim.storage.run_folder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from regprim.core.components import ComponentTable
from regprim.core.regions import Grid, bitmask, cells_of


def component_table(tensors: dict[str, Tensor], n: int, denoised: bool) -> ComponentTable:
    """The component table of a run's tensors (docs/run-folder.md): every subset's component
    for n <= 12, the listed non-zero ones above; the denoised ones when ``denoised``."""
    if "component_masks" in tensors:
        return ComponentTable(tensors["component_masks"], tensors["components"], n)
    return ComponentTable.from_dense(tensors["components_denoised" if denoised else "components"])


def _tensor(key: str, doc: str) -> property:
    return property(lambda self: self.tensors[key], doc=doc)


@dataclass
class Run:
    """A run's ``config`` (resolved settings), ``summary`` (headline numbers) and ``tensors``
    (docs/run-folder.md), read through typed properties.

    Attributes:
        path: the run folder (None for a run kept in memory).
        metrics: the faithfulness metrics (:mod:`regprim.analysis.metrics`) when computed.
    """

    config: dict[str, Any]
    summary: dict[str, Any]
    tensors: dict[str, Tensor]
    path: Path | None = None
    metrics: list[Any] | None = field(default=None, repr=False)

    # -- what was explained -------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The model's name (``config.model`` is how it was given: a name or a file)."""
        return self.summary["model"]

    @property
    def layer(self) -> str:
        return self.summary["layer"]

    @property
    def players(self) -> list[int]:
        return list(self.summary["players"])

    @property
    def n(self) -> int:
        return int(self.summary["n"])

    @property
    def class_index(self) -> int | None:
        return self.summary.get("class_index")

    @property
    def value_range(self) -> tuple[float, float]:
        low, high = self.config["value_range"]
        return float(low), float(high)

    @cached_property
    def grid(self) -> Grid:
        rows, cols = self.summary["grid"]
        return Grid(rows, cols, *self.image.shape[1:])

    code = property(lambda self: self.tensors["code"][None], doc="The code ``(1, code_dim)``.")
    f = _tensor("f", "Feature of the target at the cut layer ``(*feature_shape)``.")
    f0 = _tensor("f0", "Baseline feature ``(*feature_shape)``.")
    image = _tensor("image", "Target image ``g(f)`` ``(C, H, W)``.")
    baseline_image = _tensor("baseline_image", "Baseline image ``g(f0)`` ``(C, H, W)``.")

    @property
    def warnings(self) -> list[str]:
        """What a user must know about this run's result (subsets missing the constraint)."""
        return list(self.summary.get("warnings", []))

    @property
    def feature_change_norm(self) -> float:
        return float(self.summary["feature_change_norm"])

    # -- the decomposition ----------------------------------------------------------------------
    @property
    def denoised(self) -> bool:
        return self.summary.get("components_used") == "denoised"

    @property
    def stored_compact(self) -> bool:
        """How the run folder stores the components (docs/run-folder.md): True when n > 12 and
        only ``beta`` and the non-zero components are kept. Only :attr:`table` and
        :attr:`checked` need to know."""
        return "component_masks" in self.tensors

    @cached_property
    def table(self) -> ComponentTable:
        """The components (the denoised ones after ``--denoise``) as one
        :class:`~regprim.core.components.ComponentTable`, whatever the n."""
        return component_table(self.tensors, self.n, self.denoised)

    @property
    def components(self) -> Tensor:
        """Every subset's component ``(2**n, *feature_shape)``, row = bitmask (a dense view of
        :attr:`table`, for n <= 16)."""
        return self.table.dense()

    def component(self, masks: int | list[int] | Tensor) -> Tensor:
        """The components of ``masks`` ``(B, *feature_shape)``, or of one bitmask
        ``(*feature_shape)`` (zero for a valid action set not held; anything that is not a
        bitmask of the players is a ValueError)."""
        if isinstance(masks, int) or (isinstance(masks, Tensor) and masks.dim() == 0):
            return self.table.value([masks])[0]
        return self.table.value(masks)

    @property
    def minimal_features(self) -> Tensor | None:
        """Every subset's minimal feature ``(2**n, *feature_shape)`` matching :attr:`table`
        (None when the run keeps only ``beta``: n > 12)."""
        key = "minimal_features_denoised" if self.denoised else "minimal_features"
        return self.tensors.get(key)

    @cached_property
    def checked(self) -> tuple[Tensor, Tensor]:
        """The subsets whose minimal features were checked against the reconstruction
        constraint, and their relative masked errors: ``(masks (s,), rel_error (s,))`` (every
        non-empty subset for n <= 12, held-out subsets the solver never sampled above)."""
        if self.stored_compact:
            return self.tensors["heldout_masks"], self.tensors["heldout_rel_error"]
        rel = self.tensors["rel_error_denoised" if self.denoised else "rel_error"]
        return torch.arange(1, 2**self.n), rel[1:]

    def norm(self, mask: int) -> float:
        """L2 norm of the component of ``mask`` (0 for one not held)."""
        return self.table.norm(mask)

    @property
    def ranked(self) -> list[int]:
        """Bitmasks of the non-zero components, by decreasing norm."""
        return self.table.ranked

    @property
    def salient(self) -> list[int]:
        """Bitmasks of the salient components, by decreasing norm."""
        return [int(k) for k in self.summary["salient"]]

    def top(self, k: int) -> list[int]:
        """The ``k`` largest non-zero components."""
        return self.ranked[:k]

    def bitmask(self, cells: list[int]) -> int:
        """The bitmask of player ``cells`` (grid ids); repeated or non-player cells are errors."""
        return bitmask(self.players, cells)

    def cells(self, mask: int) -> list[int]:
        """Grid cells of a bitmask, in increasing order."""
        return cells_of(self.table.check(mask), self.players)

    # -- using it ---------------------------------------------------------------------------------
    def generator(self, device: str | torch.device = "cpu"):
        """The split generator that made this run, rebuilt from its config; refused when the
        model file or the weights the run recorded (by SHA-256) have changed since."""
        from regprim.generators.registry import load_model

        c = self.config
        self.check_sources()
        return load_model(c["model"], c["layer"], device, c.get("weights"))

    def check_sources(self) -> None:
        """The model file and weights named in the config still hash to what the run recorded
        (``model_sha256``, ``weights_sha256``); else a ValueError that says what changed."""
        from regprim.files import sources_hash
        from regprim.generators.registry import model_sources

        c = self.config
        if "model_files" in c:  # the files the run hashed
            model_files = [Path(p) for p in c["model_files"]]
        else:  # a run written before it recorded them hashed the spec's own paths
            model_files = model_sources(c["model"], imports=False)[1]
        sources = {
            "model file": (model_files, c.get("model_sha256")),
            "weights": ([Path(c["weights"])] if c.get("weights") else [], c.get("weights_sha256")),
        }
        for what, (paths, recorded) in sources.items():
            if not recorded:
                continue
            gone = [p for p in paths if not p.exists()]
            if gone or not paths:
                where = gone[0] if gone else c["model"]
                msg = f"the {what} of this run, {where}, is gone; restore it to use the run"
                raise ValueError(msg)
            if sources_hash(paths) != recorded:
                where = ", ".join(str(p) for p in paths)
                msg = (
                    f"the {what} {where} changed since this run was made (SHA-256 "
                    f"{recorded[:12]}... recorded); its numbers belong to the old one: restore "
                    "it, or explain again"
                )
                raise ValueError(msg)

    def reconstruct(
        self, cells: list[int], generator=None, salient_only: bool = True
    ) -> tuple[Tensor, int]:
        """Algorithm 2 for grid ``cells`` (all players): ``g(f0 + components meeting them)``.

        Returns the image ``(C, H, W)`` and the number of components used. The generator is
        rebuilt from the config unless given.
        """
        from regprim.core.reconstruction import reconstruct_features, selection

        target = self.bitmask(cells)
        if target == 0:
            msg = "no cells given; name at least one player cell, e.g. --cells 14"
            raise ValueError(msg)
        gen = generator or self.generator()
        masks = torch.tensor(self.salient if salient_only else self.ranked, dtype=torch.long)
        chosen = selection(masks, torch.tensor([target]))
        feature = reconstruct_features(self.component(masks), self.f0, chosen)
        image = gen.render(feature, self.code.to(gen.device))[0]
        return image, int(chosen.sum())

    def __repr__(self) -> str:  # not the tensors: typing `run` in a notebook prints this
        return f"{self}{f' at {self.path}' if self.path else ''}"

    def __str__(self) -> str:
        s = self.summary
        return (
            f"Run({s['model']}/{s['layer']}, n={s['n']}, players={s['players']}, "
            f"salient={len(s['salient'])}, subsets meeting constraint="
            f"{s['subsets_meeting_constraint']:.3f}, universal matching residual="
            f"{s['universal_matching_max_rel_residual']:.2e})"
        )
