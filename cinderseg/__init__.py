"""cinderseg: map volcanic cinder cones in DEMs with a transfer-learned U-Net.

The library holds all real logic as plain functions; the Snakemake workflow
(``Snakefile``, ``rules/``, ``scripts/``) only wires files to them. Modules
behind GIS steps (``dem``, ``mask``, ``features``, ``tiles``, ``synthetic``)
never import TensorFlow.
"""

__version__ = "0.1.0"
