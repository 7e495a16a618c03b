"""minidist: an educational simulator of distributed Transformer training in pure NumPy."""
__version__ = "0.1.0"
