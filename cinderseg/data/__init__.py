"""Training data: label masks, tiles and their spatial split, augmentation, cross-validation folds,
example regions. Never imports TensorFlow."""
