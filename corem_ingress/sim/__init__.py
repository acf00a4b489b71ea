"""Device-side tools: the fleet simulator and probes used by tests and benchmarks."""
