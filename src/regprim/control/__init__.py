"""Acting on the primitives: edits and transplants (``edit``) and the code of an edited feature
(``inversion``).
"""
