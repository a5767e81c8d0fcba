"""Every figure, each stamped with the run that made it. Matplotlib is imported lazily.
"""
