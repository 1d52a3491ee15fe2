"""Build hook: generate the gRPC modules so `pip install .` ships them."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generator = runpy.run_path(str(Path(__file__).parent / "protos" / "generate.py"))
        generator["generate"]()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
