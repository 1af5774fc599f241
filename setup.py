"""Package list for setuptools: the rooms at the top of the tree install as posedge.<room>.

pyproject.toml maps the directories (tool.setuptools.package-dir); this file only lists the
sub-packages under their installed names, which a static `packages.find` cannot do.
"""

from setuptools import find_packages, setup

ROOMS = ("agent", "drivers", "sync", "hq")

packages = ["posedge"]
for room in ROOMS:
    packages.append(f"posedge.{room}")
    packages += [f"posedge.{room}.{sub}" for sub in find_packages(room)]

setup(packages=packages)
