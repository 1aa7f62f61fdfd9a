"""Packaging is declared in pyproject.toml. This file only adds the optional mypyc build of
the hot-path modules (``FERRYMAN_COMPILE=1``, as ``scripts/build`` runs it); without it
Ferryman installs and runs as plain Python."""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("FERRYMAN_COMPILE") == "1":
    from mypyc.build import mypycify

    listing = runpy.run_path("ferryman/_compiled.py")
    paths = [str(listing["source"](m)) for m in listing["MODULES"]]
    ext_modules = mypycify(paths, group_name=listing["GROUP"], opt_level="3")

setup(ext_modules=ext_modules)
