"""Shared fixtures for the Python test suites: paths to the built binaries and the default model."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _path_from_env(name, default):
    return pathlib.Path(os.environ.get(name, default))


@pytest.fixture(scope="session")
def bin_dir():
    d = _path_from_env("ASL_BIN_DIR", ROOT / "build" / "bin")
    if not (d / "asl-cli").exists():
        pytest.fail(f"asl-cli not built in {d} (set ASL_BIN_DIR)")
    return d


@pytest.fixture(scope="session")
def default_model():
    p = _path_from_env("ASL_DEFAULT_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not p.exists():
        pytest.skip(f"default model missing: {p} (run scripts/setup.sh)")
    return p


@pytest.fixture(scope="session")
def essays_dir():
    d = _path_from_env("ASL_ESSAYS_DIR", ROOT.parent / "shared" / "data" / "pg-essays")
    if not d.exists():
        pytest.skip(f"essay data missing: {d}")
    return d
