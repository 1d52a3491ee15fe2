"""Build hook: generate the gRPC modules so `pip install .` ships them, and find the packages.

Packages are discovered, not listed, so a new subpackage cannot be left out of the
wheel. The workspace templates live at the top of the repository (templates/) and
ship as `hub.templates`; each generation's directory is data inside it.
"""

import runpy
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CODE = ("hub", "sidecar", "missioncontrol", "protos")
PACKAGES = [
    # Data directories inside the code (hub/ui/static, hub/ui/templates) are declared too:
    # setuptools warns about every importable directory the configuration leaves out.
    *find_namespace_packages(
        include=[pattern for name in CODE for pattern in (name, f"{name}.*")],
        exclude=["*.__pycache__"],
    ),
    "hub.templates",
    *(f"hub.templates.{name}" for name in find_namespace_packages(where=str(ROOT / "templates"))),
    # packaging/ (units, plists, install.sh) ships as data inside missioncontrol.packaging.
    "missioncontrol.packaging",
    *(
        f"missioncontrol.packaging.{name}"
        for name in find_namespace_packages(where=str(ROOT / "packaging"))
    ),
]


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generator = runpy.run_path(str(ROOT / "protos" / "generate.py"))
        generator["generate"]()
        super().run()


setup(packages=PACKAGES, cmdclass={"build_py": BuildPyWithProtos})
