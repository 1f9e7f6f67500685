"""Packaging: everything is in pyproject.toml except the package list, which maps the top-level ``configs/``
folder into the package as ``d2lightning.model_zoo.configs`` (the built-in configs, as detectron2 ships its
``configs/`` inside ``detectron2.model_zoo``).

pyproject.toml cannot say this: its ``packages.find`` lists only folders found under the package, and an explicit
``packages`` list would have to name every subpackage by hand. ``configs/`` stays the single copy in git; the
wheel and the sdist carry it (tested in tests/model_zoo/test_packaging.py and by scripts/check_wheel.sh), and a
source checkout or an editable install reads it where it is (d2lightning/model_zoo/model_zoo.py).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["d2lightning", "d2lightning.*"]), "d2lightning.model_zoo.configs"],
    package_dir={"d2lightning.model_zoo.configs": "configs"},
)
