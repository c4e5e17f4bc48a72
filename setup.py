"""Build rgflow._core from csrc/*.c.

Environment knobs (all optional):
  RGFLOW_BLAS=scipy-openblas32  (default) link the pinned scipy-openblas32 wheel, a build input;
                                its shared library is copied next to _core and found via $ORIGIN.
  RGFLOW_BLAS=system            system OpenBLAS + LAPACKE found through pkg-config.
  RGFLOW_WERROR=1               treat compiler warnings as errors (CI sets it).
  RGFLOW_SANITIZE=1             build with AddressSanitizer + UndefinedBehaviorSanitizer
                                (see `make sanitize`).
"""
import glob
import os
import shlex
import shutil
import subprocess

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BLAS = os.environ.get("RGFLOW_BLAS", "scipy-openblas32")
WERROR = os.environ.get("RGFLOW_WERROR") == "1"
SANITIZE = os.environ.get("RGFLOW_SANITIZE") == "1"


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            "RGFLOW_BLAS=system needs pkg-config and the openblas and lapacke .pc files "
            "(Debian: apt-get install pkg-config libopenblas-dev liblapacke-dev): %s" % exc
        )
    return shlex.split(out.stdout)


def blas_options():
    """Compile/link options and the shared library to bundle (None for system BLAS)."""
    if BLAS == "system":
        return (
            dict(
                define_macros=[("RG_BLAS_SYSTEM", "1")],
                extra_compile_args=pkg_config("--cflags", "openblas", "lapacke"),
                extra_link_args=pkg_config("--libs", "openblas", "lapacke"),
            ),
            None,
        )
    if BLAS != "scipy-openblas32":
        raise SystemExit("RGFLOW_BLAS must be 'scipy-openblas32' or 'system', got %r" % BLAS)
    import scipy_openblas32 as sob

    lib_dir = sob.get_lib_dir()
    return (
        dict(
            define_macros=[("RG_BLAS_SCIPY", "1")],
            include_dirs=[sob.get_include_dir()],
            library_dirs=[lib_dir],
            libraries=[sob.get_library()],
            extra_link_args=["-Wl,-rpath,$ORIGIN"],
        ),
        os.path.join(lib_dir, "lib%s.so" % sob.get_library()),
    )


opts, bundled_lib = blas_options()
cflags = ["-std=c99", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-math-errno"]
ldflags = []
if WERROR:
    cflags.append("-Werror")
if SANITIZE:
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    cflags = [f for f in cflags if not f.startswith("-O")] + ["-O1", "-g"] + san
    ldflags += san

core = Extension(
    "rgflow._core",
    sources=sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc", np.get_include()] + opts.get("include_dirs", []),
    define_macros=opts.get("define_macros", []),
    library_dirs=opts.get("library_dirs", []),
    libraries=opts.get("libraries", []),
    extra_compile_args=cflags + opts.get("extra_compile_args", []),
    extra_link_args=ldflags + opts.get("extra_link_args", []),
    depends=sorted(glob.glob("csrc/*.h")),
)


class BuildExt(build_ext):
    """Copies the bundled OpenBLAS next to _core so the $ORIGIN rpath finds it."""

    def build_extension(self, ext):
        super().build_extension(ext)
        self._bundle(self.get_ext_fullpath(ext.name))

    def copy_extensions_to_source(self):  # --inplace / editable installs
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            package_dir = build_py.get_package_dir(".".join(ext.name.split(".")[:-1]))
            self._bundle(os.path.join(package_dir, "_"))

    @staticmethod
    def _bundle(ext_path):
        if bundled_lib:
            dest = os.path.join(os.path.dirname(ext_path), os.path.basename(bundled_lib))
            shutil.copy2(bundled_lib, dest)


setup(ext_modules=[core], cmdclass={"build_ext": BuildExt})
