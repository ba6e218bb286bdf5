"""The split ``z --d--> f --g--> x``: the :class:`~regprim.generators.base.SplitGenerator` protocol
(``base``), cutting any module with hooks (``hooks``), the model registry (``registry``) and the
model families (``dcgan``, ``biggan``, ``planted``, ``planted_family``).
"""
