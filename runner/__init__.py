"""spot-runner's runner: submit, watch and relaunch training jobs. Never imports torch.

Keep this package's import light: ``python -m runner --help`` must start quickly, so heavy modules
(pydantic, yaml, rich) are imported inside the commands that need them."""
