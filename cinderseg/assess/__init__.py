"""Assessment: pixel and object accuracy against labels, cross-validation tables, overview and error
figures. Never imports TensorFlow."""
