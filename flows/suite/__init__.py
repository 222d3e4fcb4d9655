"""The suite room: the suite flow, the suite file, its pack, its progress, re-running what failed."""
