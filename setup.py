"""Only what pyproject.toml cannot say: the top-level search_spaces/ ships inside the wheel as
raybench/search_spaces/ (raybench.sweep.search_space reads it there, or beside the checkout when
installed editable)."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithSearchSpaces(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable: the checkout's search_spaces/ is read in place
        spaces = sorted((HERE / "search_spaces").glob("*.yaml"))
        if not spaces:
            raise FileNotFoundError(f"no search_spaces/*.yaml under {HERE}: the wheel would ship without them")
        dst = Path(self.build_lib, "raybench", "search_spaces")
        self.mkpath(str(dst))
        for src in spaces:
            self.copy_file(str(src), str(dst / src.name))


setup(cmdclass={"build_py": BuildPyWithSearchSpaces})
