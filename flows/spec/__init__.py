"""The spec room: the case model, reading and validating a spec file, templating and its sandbox, local files."""
