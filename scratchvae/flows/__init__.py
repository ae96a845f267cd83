"""Bijectors (forward = generative u -> x; inverse = normalising x -> u)."""
