"""The repository root must not claim the import name ``kernels``: HuggingFace's hub-kernels package owns it and
transformers >= 5.25 imports it. Our Triton kernels live in the top-level ``kernels/`` folder but import only as
``quietstar_fast.kernels`` (setup.py's package mapping for installs, the ``quietstar_fast/kernels`` link for
in-tree runs). Each check runs a fresh interpreter from the repository root, where the folder is next to the user."""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_QWEN3 = ("tf.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, "
              "num_attention_heads=2, num_key_value_heads=1, head_dim=16)")


def _python_from_root(code: str, *args: str, path_first: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path_first is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path_first), env.get("PYTHONPATH")]))
    command = [sys.executable, *args] if not code else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_kernels_folder_is_not_a_regular_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), "a regular package would shadow HF's kernels from the root"
    assert (ROOT / "quietstar_fast" / "kernels").resolve() == (ROOT / "kernels").resolve()


def test_a_kernels_package_on_the_path_wins_over_the_root_folder(tmp_path):
    """A stand-in for HF's package (a regular package, as the real one is) must be what ``import kernels`` finds,
    while ``quietstar_fast.kernels`` still imports from the root."""
    stub = tmp_path / "kernels"
    stub.mkdir()
    (stub / "__init__.py").write_text("CUDAProperties = 'stand-in'\n")
    result = _python_from_root("import kernels, quietstar_fast.kernels.outputs as outputs\n"
                               "print(kernels.__file__)\nprint(kernels.CUDAProperties)\nprint(outputs.__name__)",
                               path_first=tmp_path)
    assert result.stdout.split() == [str(stub / "__init__.py"), "stand-in", "quietstar_fast.kernels.outputs"]


def _hub_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


hub_kernels = pytest.mark.skipif(not _hub_kernels_installed(), reason="HF's kernels is not installed (transformers "
                                 "< 5.25 does not require it: the device image's 5.17 lane)")


@hub_kernels
def test_transformers_builds_a_model_from_the_root():
    """The issue's repro: transformers' hub-kernels integration imports ``kernels`` while building any model."""
    result = _python_from_root(f"import kernels, transformers as tf\ntf.Qwen3ForCausalLM({TINY_QWEN3})\n"
                               "print(kernels.__file__)")
    hub_init = Path(result.stdout.strip())  # a namespace package (the root folder) would print None
    assert hub_init.is_file() and hub_init.resolve().parent != (ROOT / "kernels").resolve(), result.stdout


@hub_kernels
def test_pytest_collects_the_model_tests_from_the_root():
    result = _python_from_root("", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "tests/test_quietstar.py")
    assert "tests/test_quietstar.py::" in result.stdout, result.stdout
