"""The problem every solver solves, one floor below them: a target and its game.

- ``target``: the image to explain, its feature ``f``, the baseline ``f0`` (``baseline``), the
  grid and the players (a photo's code fitted first: ``photo``);
- ``objective``: Eq. 8 as a game, :class:`~regprim.solvers.problem.objective.Objective`: the one
  place where ``u = f0 + alpha * (f - f0)`` is made (``features``) and rendered through the
  window, the memory format and ``g`` (``render``), with the masked errors of a batch of
  subsets (``errors``, ``check``) and, where the generator's reach allows it, per cell;
- ``reach`` and ``window``: which numbers reach each player's pixels and the window of them,
  from tensors and a render callable;
- ``memory``: measured memory, to fit the passes in a budget.

Solvers see an ``Objective`` and their own settings only (``regprim.solvers``).
"""
