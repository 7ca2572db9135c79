"""pcrs-indexer: index PCRS orthophoto livrables from their storage, headers only."""

__version__ = "0.1.0"
