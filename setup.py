"""Builds the wfpr._wfpr extension: SWIG over bindings/wfpr.i plus the C core;
and the tool: the `wfpr` command and the LD_PRELOAD shim, built with CMake
(WFPR_STATIC_TOOL: they need only glibc) into the package's bin/, where
the `wfpr` console script runs them from.

SWIG comes from the `swig` build requirement, so `pip install .` needs no
system SWIG. build_ext runs before build_py so the SWIG-generated
python/wfpr/_wfpr.py is packaged with the rest. WFPR_NO_TOOL=1 leaves the
tool out (a faster build of the Python module alone).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).parent.resolve()
# the one version: the C library's
VERSION = re.search(r'^#define WFPR_VERSION "([^"]+)"', (HERE / "core/include/wfpr/common.h").read_text(), re.M).group(1)
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


def build_tool(into: Path) -> None:
    """The wfpr command and the shim, into `into` (the package's bin/)."""
    cmake = shutil.which("cmake")
    if not cmake:
        sys.stderr.write("setup.py: no cmake: the wheel gets no `wfpr` command (import wfpr still works)\n")
        return
    build = HERE / "build-tool"
    subprocess.run([cmake, "-S", str(HERE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DWFPR_STATIC_TOOL=ON",
                    "-DWFPR_BUILD_TESTS=OFF", "-DWFPR_BUILD_BENCH=OFF", "-DWFPR_BUILD_EXAMPLES=OFF",
                    "-DWFPR_BUILD_LUA_MODULE=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "wfpr-cli",
                    "wfpr_preload"], check=True, stdout=subprocess.DEVNULL)
    into.mkdir(parents=True, exist_ok=True)
    for name in ("wfpr", "libwfpr-preload.so"):
        shutil.copy2(build / name, into / name)
    rules = into.parent / "rules"
    rules.mkdir(exist_ok=True)
    for rule in (HERE / "lua" / "rules").glob("*.lua"):
        shutil.copy2(rule, rules / rule.name)


class build_py(_build_py):
    def run(self):
        self.run_command("build_ext")
        super().run()
        if os.environ.get("WFPR_NO_TOOL") != "1":
            build_tool(Path(self.build_lib) / "wfpr" / "bin")


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

setup(version=VERSION, ext_modules=[extension], cmdclass={"build_py": build_py})
