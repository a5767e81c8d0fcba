"""Stage 2, the generative models: MONAI networks, augmentation and the resumable
training loops of every model family.
"""
