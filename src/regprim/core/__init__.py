"""Tensors only: the grid and its players (``regions``), OR interactions (Eq. 10,
``interactions``), the component table every solver returns (``components``), salient components
(Algorithm 1, ``salient``) and Algorithm 2 (``reconstruction``). Nothing here knows a model, a
file or a page.
"""
