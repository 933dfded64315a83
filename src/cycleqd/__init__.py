"""CycleQD: quality-diversity evolution of multi-skill models from single-skill experts."""

__version__ = "0.1.0"
