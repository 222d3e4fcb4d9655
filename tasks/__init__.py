"""The tasks floor: the step kinds, one module (or package: s3/, athena/) per AWS service, built from the step-kind
kit (kit/). Nothing here imports flows/."""
