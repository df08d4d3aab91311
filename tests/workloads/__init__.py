"""Workloads and variants in the test process: each model learns, each variant does what its
name says, every workload meets the contract."""
