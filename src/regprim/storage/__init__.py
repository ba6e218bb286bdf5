"""regprim's folders on disk: the lock, the checks and the staged write (``folders``) and the run
folder's one format (``run_folder``), on the atomic writes of :mod:`regprim.files`.
"""
