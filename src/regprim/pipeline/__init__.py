"""The pipeline end to end: ``explain`` (load, target, solve, interactions, salient, verify,
write), the ``--dry-run`` plan (``plan``), ``stability`` (re-explain, compare) and many images
(``dataset``).
"""
