"""Build of the native per-packet loop; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "topomirror.dataplane._fastpath",
            ["src/topomirror/dataplane/_fastpath.c"],
            libraries=["crypto"],  # OpenSSL's libcrypto (Debian: libssl-dev) for AES-256-GCM
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        )
    ]
)
