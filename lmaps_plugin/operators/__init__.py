"""Forward operators (image restoration) following InverseBench's operator contract.

Concrete operators live in their modules (``linear``, ``nonlinear``, ``nondiff``, ``jpeg``) and
are found by name through the entry-point registry (:mod:`.registry`), which loads them
lazily.
"""
from .base import LinearOperator, Operator
from .registry import available_operators, build_operator, get_operator
from .matrix import MatrixOperator, operator_matrix

__all__ = ["Operator", "LinearOperator", "MatrixOperator", "operator_matrix", "available_operators",
           "get_operator", "build_operator"]
