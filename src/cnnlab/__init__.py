"""cnnlab: images in, a trained, evaluated CNN classifier out; a classic CNN course, runnable."""

__version__ = "0.1.0"
