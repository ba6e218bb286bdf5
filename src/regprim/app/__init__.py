"""The user's entry points: the command line (``cli``, its options from the settings in
``cli_options``) and the live explorer (``serve``).
"""
