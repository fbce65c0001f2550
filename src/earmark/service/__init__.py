"""Running a target as a service: embedded in a test suite, watched, reconfigured live."""
