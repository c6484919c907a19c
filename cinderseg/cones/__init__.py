"""From probability maps and DEMs to cones: vectorizing, DEM outlines, morphometry, the classical
detector, cone figures. Never imports TensorFlow."""
