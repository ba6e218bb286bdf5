"""One explanation: the target it starts from (``target``: code, f, f0, x, grid, players), the
baseline ``f0`` (``baseline``), the numbers of ``summary.json`` (``summary``) and the result
object (``run``).
"""
