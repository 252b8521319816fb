"""Built-in teaching-data sources, one module each; installed as ``tgbench.methods``."""
