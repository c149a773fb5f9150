# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Entry point of the application folder: ``python integrations/monai_deploy -i IN -o OUT`` (and of the MAP)."""

import logging

from app import MedSoraApp

if __name__ == "__main__":
    logging.info(f"Begin {__name__}")
    MedSoraApp().run()
    logging.info(f"End {__name__}")
