"""The base layer: errors, settings checks, the config schema, raster I/O and grids, the model card,
running a step. Imports no other cinderseg package and never TensorFlow."""
