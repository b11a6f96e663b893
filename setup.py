"""Metadata lives in pyproject.toml; this only ships the repository's top-level recipes/ and targets/ inside the
package (edgeqwen/_bundled/), so a wheel or an index install finds them through importlib.resources."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithBundledData(build_py):
    def run(self):
        super().run()
        for kind, pattern in (("recipes", "*/*.yaml"), ("targets", "*.yaml")):
            for src in sorted((ROOT / kind).glob(pattern)):
                dest = Path(self.build_lib) / "edgeqwen" / "_bundled" / kind / src.relative_to(ROOT / kind)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(src), str(dest))


setup(cmdclass={"build_py": BuildPyWithBundledData})
