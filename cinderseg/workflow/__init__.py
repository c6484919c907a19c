"""The workflow's configuration: validation with defaults, cross-key checks, input and output checks.
Read by the Snakefile; never imports TensorFlow."""
