"""SparseHead pipeline: self-supervised image encoders with a sparse projection head."""

__version__ = "0.1.0"
