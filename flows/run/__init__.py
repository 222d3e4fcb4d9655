"""The run room: the engine, locks, recover, the preflight, the run's shared state, Prefect server and logs."""
