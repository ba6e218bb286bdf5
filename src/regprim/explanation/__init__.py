"""One explanation's result: the numbers of ``summary.json`` (``summary``) and the result
object (``run``). Its target and baseline are the solvers' problem (:mod:`regprim.solvers.problem`).
"""
