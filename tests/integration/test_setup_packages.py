"""scripts/setup installs every system file and tool that hlimage and its tests use.

CI once passed only because its machine had packages installed by hand. Here every absolute
system path and every program run by name in hlimage/ and tests/ is found by reading the
source (so a path added later is checked without editing this file), resolved with `dpkg -S`
to the package that ships it, and that package must be one scripts/setup lists, or one those
pull in through Depends/Pre-Depends, or part of every Debian system (Essential or
Priority: required, which is what `debootstrap --variant=minbase` installs).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup"
SCANNED = ("hlimage", "tests")

# Where Debian packages put files. /etc, /boot, /dev, /proc, /tmp ... in the source are the
# machine's own configuration, paths inside the media hlimage builds, or kernel interfaces.
SYSTEM_PATH = re.compile(r"^/(usr|bin|sbin|lib|lib32|lib64|libx32|opt)(/[^\s]*)?$")
PROGRAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
RUNNERS = {"run", "call", "Popen", "check_call", "check_output"}
ARGV_NAME = re.compile(r"argv|command|cmd", re.IGNORECASE)

# Named in the source but made by the project or its tests, not installed: path -> why.
NOT_INSTALLED: dict[str, str] = {}


@dataclass(frozen=True)
class Use:
    """A system path or a program named in the source, and the first place that names it."""

    kind: str  # "path" | "program"
    name: str
    where: str


# --- what the source names ------------------------------------------------------------------


def _constant(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _pattern(node: ast.AST) -> str | None:
    """A path-like expression as a glob: f"/usr/lib/grub/{platform}" -> /usr/lib/grub/*,
    Path("/usr/lib") / "grub" -> /usr/lib/grub."""
    text = _constant(node)
    if text is not None:
        return text
    if isinstance(node, ast.JoinedStr):
        parts = [_constant(value) for value in node.values]
        return "".join("*" if part is None else part for part in parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = _pattern(node.left), _pattern(node.right)
        if left is not None:
            return f"{left.rstrip('/')}/{right if right is not None else '*'}"
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Path"
        and len(node.args) == 1
    ):
        return _pattern(node.args[0])
    return None


def _strings(node: ast.AST | None) -> list[str]:
    """The strings of a literal tuple or list, or of a module-level name bound to one."""
    if isinstance(node, ast.Tuple | ast.List):
        return [text for element in node.elts if (text := _constant(element)) is not None]
    return []


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


class _Module:
    """One source file's uses. Programs are what `shutil.which` is asked for (directly, through
    a helper such as `tool(name)`, through a loop over literal names or a parametrized
    argument) and the first word of a literal argv (given to subprocess, or with options)."""

    def __init__(self, path: Path) -> None:
        self.where = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), str(path))
        self.nodes = list(ast.walk(tree))
        parents = {id(child): node for node in self.nodes for child in ast.iter_child_nodes(node)}
        self.skipped = {  # docstrings, and the pieces of f-strings (read whole by _pattern)
            id(node.body[0].value)
            for node in self.nodes
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        self.skipped |= {
            id(part)
            for node in self.nodes
            if isinstance(node, ast.JoinedStr)
            for part in node.values
        }
        self.names: dict[str, ast.AST] = {}
        for statement in tree.body:
            if isinstance(statement, ast.Assign):
                for target in statement.targets:
                    if isinstance(target, ast.Name):
                        self.names[target.id] = statement.value
        self.parametrized: dict[str, list[str]] = {}
        self.loops: dict[str, list[str]] = {}
        self.helpers: set[str] = set()
        for node in self.nodes:
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                self.loops.setdefault(node.target.id, []).extend(self._values(node.iter))
            if isinstance(node, ast.Call) and _called_name(node) == "parametrize" and node.args:
                argnames = _constant(node.args[0])
                if argnames and "," not in argnames and len(node.args) > 1:
                    values = self._values(node.args[1])
                    self.parametrized.setdefault(argnames.strip(), []).extend(values)
            variable = self._which_argument(node)
            enclosing = parents.get(id(node))
            while variable is not None and enclosing is not None:
                # def tool(name): ... shutil.which(name): tool("sbverify") names a program.
                if isinstance(enclosing, ast.FunctionDef) and variable in {
                    argument.arg for argument in enclosing.args.args
                }:
                    self.helpers.add(enclosing.name)
                enclosing = parents.get(id(enclosing))

    def _values(self, node: ast.AST) -> list[str]:
        if isinstance(node, ast.Name):
            return _strings(self.names.get(node.id))
        return _strings(node)

    @staticmethod
    def _which_argument(node: ast.AST) -> str | None:
        """The name given to which(NAME), for a NAME that is a variable."""
        if isinstance(node, ast.Call) and _called_name(node) == "which" and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Name):
                return argument.id
        return None

    def uses(self) -> Iterator[Use]:
        for node in self.nodes:
            if id(node) in self.skipped:
                continue
            pattern = _pattern(node)
            if pattern is not None and SYSTEM_PATH.match(pattern):
                yield Use("path", pattern, f"{self.where}:{getattr(node, 'lineno', 0)}")
            for program in self._programs(node):
                if PROGRAM_NAME.match(program):
                    yield Use("program", program, f"{self.where}:{getattr(node, 'lineno', 0)}")

    def _programs(self, node: ast.AST) -> list[str]:
        if isinstance(node, ast.Assign | ast.Return):
            # argv = ["qemu-system-x86_64", "-accel", ...] or `return [...]` alike: a command
            # line built here and run elsewhere. Only such lists: run_cli's arguments look alike.
            named = isinstance(node, ast.Return) or any(
                isinstance(target, ast.Name) and ARGV_NAME.search(target.id)
                for target in node.targets
            )
            value = node.value
            if not named or not isinstance(value, ast.List) or not value.elts:
                return []
            first = _constant(value.elts[0])
            options = [text for e in value.elts[1:] if (text := _constant(e)) is not None]
            if first is not None and any(option.startswith("-") for option in options):
                return [first]
            return []
        if not isinstance(node, ast.Call) or not node.args:
            return []
        name, argument = _called_name(node), node.args[0]
        if name in RUNNERS and isinstance(argument, ast.List | ast.Tuple) and argument.elts:
            first = _constant(argument.elts[0])
            return [first] if first is not None else []
        if name == "which" or name in self.helpers:
            text = _constant(argument)
            if text is not None:
                return [text]
            if isinstance(argument, ast.Name):
                return self.loops.get(argument.id, []) + self.parametrized.get(argument.id, [])
        return []


@cache
def named_uses() -> tuple[Use, ...]:
    """Every path and program the source names, once each, in a stable order."""
    first: dict[tuple[str, str], Use] = {}
    for directory in SCANNED:
        for path in sorted((ROOT / directory).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # its paths and names are examples and prefixes, not uses
            for use in _Module(path).uses():
                first.setdefault((use.kind, use.name), use)
    return tuple(sorted(first.values(), key=lambda use: (use.kind, use.name)))


# --- what scripts/setup installs -------------------------------------------------------------


def setup_packages(text: str | None = None) -> list[str]:
    """The names in scripts/setup's `packages=( ... )` array, comments and all."""
    text = SETUP.read_text() if text is None else text
    match = re.search(r"^packages=\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert match, f"{SETUP} has no packages=( ... ) array"
    words = re.sub(r"#.*", "", match.group(1)).split()
    return words


@dataclass(frozen=True)
class Installed:
    name: str
    base: bool  # Essential or Priority: required: on every Debian system
    provides: tuple[str, ...]
    depends: tuple[tuple[str, ...], ...]  # groups of alternatives


def _relations(field: str) -> Iterator[tuple[str, ...]]:
    for group in field.split(","):
        names = [
            re.split(r"[\s(:\[]", option.strip(), maxsplit=1)[0] for option in group.split("|")
        ]
        if any(names):
            yield tuple(name for name in names if name)


@cache
def installed() -> dict[str, Installed]:
    fields = "${Package}\t${db:Status-Abbrev}\t${Essential}\t${Priority}\t${Provides}\t"
    fields += "${Pre-Depends}\t${Depends}\n"
    output = subprocess.run(
        ["dpkg-query", "-W", "-f", fields], capture_output=True, text=True, check=True
    ).stdout
    packages: dict[str, Installed] = {}
    for line in output.splitlines():
        name, status, essential, priority, provides, pre_depends, depends = line.split("\t")
        if not status.startswith("ii"):
            continue
        entry = packages.get(name)
        relations = tuple(_relations(pre_depends)) + tuple(_relations(depends))
        packages[name] = Installed(
            name,
            essential == "yes" or priority == "required" or (entry is not None and entry.base),
            tuple(option[0] for option in _relations(provides)),
            relations + (entry.depends if entry else ()),
        )
    return packages


def closure(roots: Iterable[str]) -> set[str]:
    """The installed packages that installing `roots` brings, with the base system: of each
    group of alternatives the first, as apt chooses, or failing that whichever is installed."""
    packages = installed()
    providers: dict[str, list[str]] = {}
    for package in packages.values():
        for virtual in package.provides:
            providers.setdefault(virtual, []).append(package.name)

    def satisfying(option: str) -> list[str]:
        return [option] if option in packages else providers.get(option, [])

    pending = [name for name in roots if name in packages]
    pending += [package.name for package in packages.values() if package.base]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for group in packages[name].depends:
            chosen = satisfying(group[0])
            for option in group[1:]:
                if chosen:
                    break
                chosen = satisfying(option)
            pending.extend(chosen)
    return seen


# --- which package ships a file --------------------------------------------------------------


def _spellings(path: str) -> list[str]:
    """The names dpkg may know a file by: as given, resolved, and across the /usr merge (dash
    ships /bin/sh, which PATH finds as /usr/bin/sh)."""
    found = [path, os.path.realpath(path)]
    for name in list(found):
        for merged, unmerged in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"),
                                 ("/usr/lib/", "/lib/")):  # fmt: skip
            if name.startswith(merged):
                found.append(unmerged + name.removeprefix(merged))
            elif name.startswith(unmerged):
                found.append(merged + name.removeprefix(unmerged))
    return list(dict.fromkeys(found))


def owners(paths: Iterable[str]) -> dict[str, set[str]]:
    """`dpkg -S` for many paths at once: path -> the packages that ship it."""
    spellings = {path: _spellings(path) for path in paths}
    queried = sorted({name for names in spellings.values() for name in names})
    result = subprocess.run(
        ["dpkg", "-S", *queried], capture_output=True, text=True, check=False
    ).stdout
    by_name: dict[str, set[str]] = {}
    for line in result.splitlines():
        if line.startswith("diversion ") or ": " not in line:
            continue
        packages, name = line.split(": ", 1)
        by_name.setdefault(name, set()).update(
            package.strip().split(":")[0] for package in packages.split(",")
        )
    return {
        path: set().union(*(by_name.get(name, set()) for name in names))
        for path, names in spellings.items()
    }


def resolve(use: Use) -> list[str]:
    """The files on this machine a use means: the glob's matches, or the program on PATH."""
    if use.kind == "path":
        return sorted(glob.glob(use.name))
    # Programs pip installs (from pyproject.toml) are in the virtualenv, which PATH may lack.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    program = shutil.which(use.name, path=search)
    return [program] if program else []


@cache
def shipping() -> dict[Use, tuple[list[str], set[str]]]:
    """For every use: the files it means here, and the packages that ship them (one dpkg -S)."""
    files = {use: resolve(use) for use in named_uses()}
    found = owners(name for names in files.values() for name in names)
    return {
        use: (names, set().union(*(found[name] for name in names))) for use, names in files.items()
    }


def uncovered(uses: Iterable[Use], packages: Iterable[str]) -> list[str]:
    """One line for each use that no package in the closure of `packages` provides."""
    covered = closure(packages)
    problems: list[str] = []
    for use in uses:
        if use.name in NOT_INSTALLED:
            continue
        files, shipped_by = shipping()[use]
        if use.kind == "program" and files and _in_virtualenv(files[0]):
            continue  # installed by pip into .venv, from pyproject.toml, not by apt
        if not files:
            problems.append(
                f"{use.name} ({use.where}) is not on this machine: scripts/setup installs "
                "nothing that provides it"
            )
            continue
        if not shipped_by & covered:
            who = ", ".join(sorted(shipped_by)) or "no package (dpkg -S finds no owner)"
            problems.append(
                f"{use.name} ({use.where}) comes from {who}, which scripts/setup does not "
                "install: add it to the packages list there"
            )
    return problems


def _in_virtualenv(program: str) -> bool:
    return Path(program).resolve().is_relative_to(Path(sys.prefix).resolve())


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpkg() -> None:
    require(shutil.which("dpkg") is not None and SETUP.is_file(), "not a Debian machine")
    absent = [name for name in setup_packages() if name not in installed()]
    require(not absent, f"scripts/setup's {', '.join(absent)} not installed; run scripts/setup")


def test_the_source_is_read_for_paths_and_programs() -> None:
    """The scan finds what is known to be there, each kind of way of naming a program."""
    names = {(use.kind, use.name) for use in named_uses()}
    expected = {
        ("path", "/usr/share/OVMF/OVMF_CODE_4M.fd"),  # Path("...") constant
        ("path", "/usr/lib/grub/*"),  # f"/usr/lib/grub/{platform}"
        ("path", "/usr/lib/shim/fbx64.efi"),
        ("program", "qemu-system-aarch64"),  # a literal argv
        ("program", "grub-mkimage"),  # shutil.which("grub-mkimage")
        ("program", "osslsigncode"),
        ("program", "sgdisk"),  # for tool in (...): which(tool)
        ("program", "sbverify"),  # tool("sbverify"), a helper around which
        ("program", "dash"),  # @parametrize("shell", SHELLS) ... which(shell)
        ("program", "objdump"),  # subprocess.run(["objdump", ...])
    }
    assert expected <= names, sorted(expected - names)
    assert not {name for kind, name in names if kind == "path" and " " in name}


def test_setup_lists_its_packages_in_a_readable_array() -> None:
    packages = setup_packages()
    assert len(packages) > 5 and "qemu-system-x86" in packages
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name) for name in packages), packages
    assert len(packages) == len(set(packages)), "a package listed twice"
    assert setup_packages("x\npackages=(\n  a b # c d\n  e\n)\ny=(f)\n") == ["a", "b", "e"]


def test_setup_installs_everything_the_source_uses(dpkg: None) -> None:
    problems = uncovered(named_uses(), setup_packages())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("removed", "needed_by"),
    [
        ("shim-unsigned", "/usr/lib/shim/fbx64.efi"),
        ("osslsigncode", "osslsigncode"),
        ("gdisk", "sgdisk"),
        ("qemu-efi-aarch64", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"),
    ],
)
def test_a_package_left_out_of_setup_is_caught(dpkg: None, removed: str, needed_by: str) -> None:
    """The check can fail: without a package that nothing else pulls in, its files are
    reported (these are the packages a fresh machine once lacked, and others like them)."""
    packages = [name for name in setup_packages() if name != removed]
    uses = [use for use in named_uses() if use.name == needed_by]
    assert uses, f"the source no longer names {needed_by}; pick another example"
    problems = uncovered(uses, packages)
    assert len(problems) == 1 and removed in problems[0], problems
