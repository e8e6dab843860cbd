"""tfjetflows: normalizing flows as fast detector simulation of calorimeter jet images.

Importing this package is cheap (no TensorFlow); the modules that need TensorFlow import it
themselves.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
