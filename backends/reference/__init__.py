"""A small NumPy reference interpreter, used to test the JAX backend differentially."""
