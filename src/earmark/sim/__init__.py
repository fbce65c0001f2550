"""Workloads and the stacks they run on: the demo's writers, over TCP or the simulator."""
