"""Stage 3, copy detectors: one interface (:mod:`.base`), one module per detector, the
factory that builds them by name, and the one nearest-neighbour search they share.
"""
