"""Builds the wfpr._wfpr extension: SWIG over bindings/wfpr.i plus the C core.

SWIG comes from the `swig` build requirement, so `pip install .` needs no
system SWIG. build_ext runs before build_py so the SWIG-generated
python/wfpr/_wfpr.py is packaged with the rest.
"""
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).parent.resolve()
# the lists CMakeLists.txt builds libwfpr, the Lua rule host and the engine from
# (wfpr.Proxy runs the C engine)
CORE_SOURCES = [line.split(":", 1)[1].strip() for line in (HERE / "core" / "sources.txt").read_text().splitlines()
                if line.split(":", 1)[0] in ("wfpr", "wfpr_rules", "wfpr_engine")]


def pkg_config(*args):
    """Flags from pkg-config, or None where it or the package is missing."""
    try:
        return subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None


LUA_CFLAGS = pkg_config("--cflags", "lua5.4") or ["-I/usr/include/lua5.4"]
LUA_LIBS = [flag[2:] for flag in (pkg_config("--libs", "lua5.4") or ["-llua5.4"]) if flag.startswith("-l")]
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
    include_dirs=["core/include", "core/src", *(f[2:] for f in LUA_CFLAGS if f.startswith("-I"))],
    define_macros=[("_GNU_SOURCE", None)],
    swig_opts=["-builtin", "-threads", "-Icore/include", "-Ibindings", "-outdir", "python/wfpr"],
    extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-Wno-unused-parameter"],
    libraries=["crypto", *LUA_LIBS],
    depends=[str(p.relative_to(HERE)) for p in INTERFACE],
)

setup(ext_modules=[extension], cmdclass={"build_py": build_py})
