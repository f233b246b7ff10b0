"""Load generators and benchmarks run by hand against a running system (not by the tests)."""
