"""Workloads, the stacks they run on (TCP or the simulator), the simulated network's model."""
