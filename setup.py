"""Packaging is declared in pyproject.toml. This file only adds the optional mypyc build of
the hot-path modules (``FERRYMAN_COMPILE=1``, as ``scripts/build`` runs it); without it
Ferryman installs and runs as plain Python."""

import os
import runpy
from pathlib import Path

from setuptools import setup

ext_modules = []
package_data = {}
if os.environ.get("FERRYMAN_COMPILE") == "1":
    from mypyc.build import mypycify

    listing = runpy.run_path("ferryman/_compiled.py")
    # The sources as this build sees them, recorded beside them (and shipped in a wheel):
    # ferryman/__init__ runs plain Python whenever the sources differ from this record.
    Path("ferryman/_hot.modules").write_text(listing["stamp_text"](), encoding="utf-8")
    package_data = {"ferryman": ["_hot.modules"]}
    paths = [str(listing["source"](m)) for m in listing["MODULES"]]
    ext_modules = mypycify(paths, group_name=listing["GROUP"], opt_level="3")

setup(ext_modules=ext_modules, package_data=package_data)
