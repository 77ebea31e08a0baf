"""Recipes and tools are scripts, not package modules: the tests load them by path with :func:`load_script`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES = PROJECT_ROOT / "recipes"
TOOLS = PROJECT_ROOT / "tools"


def load_script(path: Path, module_name: str) -> ModuleType:
    """Execute the script at ``path`` as module ``module_name`` (registered: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
