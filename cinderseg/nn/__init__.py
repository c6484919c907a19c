"""The network: U-Net and encoders, losses, training, calibration and prediction (TensorFlow/Keras).
The only package that imports TensorFlow; this file and :mod:`cinderseg.nn.settings` do not, so that
the workflow can check the settings without it.

Importing the package prepares TensorFlow's start (before any of its modules imports it): its
environment defaults, and a quiet first import (:mod:`cinderseg.nn.runtime`).
"""

from cinderseg.nn import runtime

runtime.set_environment()
runtime.quiet_tensorflow_import()
