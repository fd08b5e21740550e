"""Data: sources -> uint8 arrays, the prepared-array format, and the shared pre-processing."""
