"""tgbench: a benchmark harness for teaching-data methods (real data, dataset distillation, GTN, yours)."""

__version__ = "0.1.0"
