"""Benchmark harness: the gateway against a bare forwarder, in front of a fast fake provider."""
