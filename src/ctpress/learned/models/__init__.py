"""Whole learned models (training path and coding path), see :mod:`.base`."""
