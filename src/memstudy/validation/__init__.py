"""Detectors measured, not trusted: planted copies with known truth.
"""
