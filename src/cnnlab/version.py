"""cnnlab's version: a leaf, so that stages can record it (checkpoints, exports, the report) without importing the
package's __init__ (which opens the notebook API)."""

__version__ = "0.1.0"
