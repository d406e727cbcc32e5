"""The decorator every pipeline step uses: Shepherd's platform image, no package installs at run time.

The step bodies import Shepherd's own modules, which the image (cluster) or the venv (local runs)
provides, so nothing is downloaded when a step starts.
"""

from __future__ import annotations

import os

from kfp import dsl

from components.platform import PLATFORM_IMAGE


def step(func):
    """Make `func` a KFP component running in the platform image."""
    if os.environ.get("_KFP_RUNTIME") == "true":
        # Inside a running step KFP's runtime-only `kfp.dsl` has no decorator, and the step's body
        # only needs the logic modules: leave the function as it is.
        return func
    return dsl.component(func, base_image=PLATFORM_IMAGE, install_kfp_package=False)
