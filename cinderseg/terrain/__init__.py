"""Terrain: DEMs from files, USGS 3DEP downloads or synthetic volcanoes, and the channels built from
them. Never imports TensorFlow."""
