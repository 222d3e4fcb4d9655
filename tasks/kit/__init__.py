"""The step-kind kit: what every step kind is built from (its base model and context, errors, polling, waiting for
counts and runs, JSON checks, markdown, secrets, AWS clients, IAM footprints, the undo journal)."""
