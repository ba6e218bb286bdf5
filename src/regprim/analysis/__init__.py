"""Measuring an explanation: each claim of the paper as a number (``metrics``)."""
