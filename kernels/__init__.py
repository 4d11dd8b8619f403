"""Hand-written kernels, each with a pure-JAX reference in the tests (installed as jaxmap.kernels)."""
