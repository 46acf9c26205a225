#!/usr/bin/env python
"""The project's entry point: python scripts/run.py +experiment=<name> [stages=[...]] [key=value ...].

Expected bad input (asr.errors.UserError) ends with one message and exit status 1, no traceback.
"""

import sys

import hydra
from omegaconf import DictConfig

from asr import settings
from asr.errors import UserError
from asr.pipeline import runner

settings.register()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        runner.run(cfg)
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
