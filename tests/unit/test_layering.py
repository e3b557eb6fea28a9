"""The package's layers import one way: description -> model -> xen/ -> formats/ -> outputs/
-> cli. formats/ is a leaf, plumbing/ knows no format's policy, and nothing below the command
line imports it. Read from the source (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hlimage"


def imports_of(path: Path) -> set[str]:
    """Every hlimage module `path` imports, by its dotted name."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hlimage")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hlimage"):
            for alias in node.names:
                # `from hlimage.formats import pe` imports the module hlimage.formats.pe.
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def modules_in(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


# (folder, the prefixes its modules may import from hlimage)
RULES = [
    ("formats", ("hlimage.formats", "hlimage.errors")),
    ("plumbing", ("hlimage.plumbing", "hlimage.formats.payload", "hlimage.errors")),
]


@pytest.mark.parametrize(("folder", "allowed"), RULES)
def test_a_layer_imports_only_what_is_below_it(folder: str, allowed: tuple[str, ...]) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in modules_in(folder)
        for name in imports_of(path)
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)
    }
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("xen", ("hlimage.outputs", "hlimage.cli", "hlimage.build", "hlimage.manifest")),
        ("outputs", ("hlimage.cli",)),
        ("secureboot", ("hlimage.cli",)),
    ],
)
def test_nothing_imports_upwards(folder: str, forbidden: tuple[str, ...]) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in modules_in(folder)
        for name in imports_of(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    }
    assert not wrong, sorted(wrong)


def test_no_module_shadows_the_standard_library() -> None:
    import sys

    shadows = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.stem in sys.stdlib_module_names and path.stem != "__init__"
    }
    assert not shadows, sorted(shadows)


def test_the_rules_can_fail() -> None:
    """The scan sees an import inside a function, and a module imported with from-import."""
    sample = PACKAGE / "formats" / "payload.py"
    assert "hlimage.errors" in imports_of(sample)
    assert "hlimage.formats.pe" in imports_of(PACKAGE / "formats" / "authenticode.py")
    assert "hlimage.formats.authenticode" in imports_of(PACKAGE / "outputs" / "unified.py")
