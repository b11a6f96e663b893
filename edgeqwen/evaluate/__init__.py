"""Accuracy of an artifact against the PyTorch fp32 reference (PPL ratio, KLD, top-1, greedy match)."""
