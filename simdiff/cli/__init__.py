"""Hydra entry points: the only package that imports hydra or omegaconf."""
