"""Plain-Python reference models of the gateway/_fast primitives, for property tests."""
