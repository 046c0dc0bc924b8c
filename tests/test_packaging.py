"""Every Python package folder of the repo is listed in pyproject.toml.

The editable install finds unlisted folders anyway, so a missing entry only shows up in a normal
(wheel) install; this test catches it on the spot."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / path for name, path in cfg["package-dir"].items()}
    listed = set(cfg["packages"])
    found = set()
    for top in ("kimi_gguf", "kimi_gguf.convert", "kimi_gguf.python_ref", "kimi_gguf.ggml_ops"):
        base = dirs[top]
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((top,) + rel))
    missing = sorted(found - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
