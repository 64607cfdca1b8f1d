"""Builds the wfpr._wfpr extension: SWIG over bindings/wfpr.i plus the C core.

SWIG comes from the `swig` build requirement, so `pip install .` needs no
system SWIG. build_ext runs before build_py so the SWIG-generated
python/wfpr/_wfpr.py is packaged with the rest.
"""
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).parent.resolve()
# the same list CMakeLists.txt builds libwfpr from
CORE_SOURCES = [line.strip() for line in (HERE / "core" / "sources.txt").read_text().splitlines()
                if line.strip().endswith(".c") and not line.startswith("#")]
INTERFACE = sorted((HERE / "bindings").glob("*.i")) + sorted((HERE / "core").rglob("*.h"))
WRAPPER = HERE / "bindings" / "wfpr_wrap.c"

# setuptools re-runs SWIG only when bindings/wfpr.i itself is newer than the
# wrapper; an edit to an included .i or a header must regenerate it too.
if WRAPPER.exists() and max(p.stat().st_mtime for p in INTERFACE) > WRAPPER.stat().st_mtime:
    WRAPPER.unlink()


class build_py(_build_py):
    def run(self):
        self.run_command("build_ext")
        super().run()


extension = Extension(
    "wfpr.__wfpr",
    sources=["bindings/wfpr.i", *CORE_SOURCES],
    include_dirs=["core/include", "core/src"],
    define_macros=[("_GNU_SOURCE", None)],
    swig_opts=["-builtin", "-threads", "-Icore/include", "-Ibindings", "-outdir", "python/wfpr"],
    extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-Wno-unused-parameter"],
    libraries=["crypto"],
    depends=[str(p.relative_to(HERE)) for p in INTERFACE],
)

setup(ext_modules=[extension], cmdclass={"build_py": build_py})
