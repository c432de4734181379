"""Torch numerics: twins of the numpy format oracles, usable inside traced / exported graphs."""

from qpasses.numerics.fake_quant import fake_quant_activation

__all__ = ["fake_quant_activation"]
