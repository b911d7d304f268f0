"""Evaluation: distances between point clouds, the classifier-feature Fréchet distance and
precision/recall, memorization, pictures, and the end-of-run evaluation."""
