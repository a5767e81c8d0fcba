"""Stage 4, what is measured: Dar et al.'s memorization rates, patient-level rates,
membership inference and image quality.
"""
