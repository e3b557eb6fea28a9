"""Shell assignments read as data: what bash would set, or one line naming what would run."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlimage.errors import HlimageError
from hlimage.importers.shellvars import Variables, read, read_text

CONFIG = Path("/cfg/config")


def values(variables: Variables) -> dict[str, dict[str, str]]:
    return {
        name: {index: entry.value for index, entry in elements.items()}
        for name, elements in variables.elements.items()
    }


def test_quotes_comments_and_blank_lines() -> None:
    text = """# ImageBuilder config

MEMORY_START="0x40000000"
MEMORY_END=0x50000000   # trailing comment
XEN_CMD='console=dtuart dom0_mem=512M'
DOM0_CMD="console=hvc0 "'root=/dev/ram0'
ESCAPED=a\\ b\\"c
HASH=a#b
EMPTY=
QUOTED_EMPTY=""
"""
    assert values(read_text(text, CONFIG)) == {
        "MEMORY_START": {"0": "0x40000000"},
        "MEMORY_END": {"0": "0x50000000"},
        "XEN_CMD": {"0": "console=dtuart dom0_mem=512M"},
        "DOM0_CMD": {"0": "console=hvc0 root=/dev/ram0"},
        "ESCAPED": {"0": 'a b"c'},
        "HASH": {"0": "a#b"},  # not a comment: # starts one only at a word's start
        "EMPTY": {"0": ""},
        "QUOTED_EMPTY": {"0": ""},
    }


def test_arrays_as_imagebuilder_writes_them() -> None:
    text = """NUM_DOMUS=2
DOMU_KERNEL[0]="Image"
DOMU_KERNEL[1]=Image-2
DOMU_VCPU_HARD_AFFINITY[1,0]="0-1"
DOMU_VCPU_HARD_AFFINITY[ 1 , 1 ]="3"
LIST=(a "b c" 'd')
LIST+=(e)
"""
    variables = read_text(text, CONFIG)
    assert values(variables) == {
        "NUM_DOMUS": {"0": "2"},
        "DOMU_KERNEL": {"0": "Image", "1": "Image-2"},
        "DOMU_VCPU_HARD_AFFINITY": {"1,0": "0-1", "1,1": "3"},
        "LIST": {"0": "a", "1": "b c", "2": "d", "3": "e"},
    }
    assert variables.get("DOMU_KERNEL", "1") is not None
    entry = variables.get("DOMU_VCPU_HARD_AFFINITY", "1,1")
    assert entry is not None and entry.line == 5
    assert entry.written == "DOMU_VCPU_HARD_AFFINITY[ 1 , 1 ]"


def test_a_later_assignment_wins_and_plain_is_element_zero() -> None:
    text = "NUM_DOMUS=1\nX=a\nNUM_DOMUS=2\nX[0]+=b\nX+=c\nARR=(1 2)\nARR=(3)\n"
    variables = read_text(text, CONFIG)
    assert values(variables) == {
        "NUM_DOMUS": {"0": "2"},
        "X": {"0": "abc"},
        "ARR": {"0": "3"},  # a whole-array assignment replaces the array
    }
    count = variables.get("NUM_DOMUS")
    assert count is not None and count.line == 3


def test_expansions_of_what_the_file_set() -> None:
    text = """DIR=/srv/tftp
XEN="$DIR/xen"
DEVICE_TREE=${DIR}/virt.dtb
DOMU_KERNEL[0]=Image
DOMU_KERNEL[1]="${DOMU_KERNEL[0]}"
XEN_CMD="console=dtuart"
XEN_CMD="$XEN_CMD loglvl=all"
PRICE='$5'
LONE="a $ b"
"""
    variables = read_text(text, CONFIG)
    got = values(variables)
    assert got["XEN"] == {"0": "/srv/tftp/xen"}
    assert got["DEVICE_TREE"] == {"0": "/srv/tftp/virt.dtb"}
    assert got["DOMU_KERNEL"] == {"0": "Image", "1": "Image"}
    assert got["XEN_CMD"] == {"0": "console=dtuart loglvl=all"}
    assert got["PRICE"] == {"0": "$5"}
    assert got["LONE"] == {"0": "a $ b"}
    assert variables.referenced == {"DIR", "DOMU_KERNEL", "XEN_CMD"}


def test_values_over_several_lines_keep_their_first_line() -> None:
    text = 'A="one\ntwo"\nB=x\\\ny\nC=3\n'
    variables = read_text(text, CONFIG)
    assert values(variables) == {"A": {"0": "one\ntwo"}, "B": {"0": "xy"}, "C": {"0": "3"}}
    lines = {name: entry.line for name in ("A", "B", "C") if (entry := variables.get(name))}
    assert lines == {"A": 1, "B": 3, "C": 5}


def test_several_assignments_on_a_line() -> None:
    assert values(read_text("A=1 B=2; C=3", CONFIG)) == {
        "A": {"0": "1"},
        "B": {"0": "2"},
        "C": {"0": "3"},
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("A=1\necho hello\n", '/cfg/config:2: "echo hello": not an assignment (VAR=value)'),
        ("export XEN=xen", '/cfg/config:1: "export XEN=xen": not an assignment'),
        ("XEN = xen", '/cfg/config:1: "XEN = xen": not an assignment'),
        ("A=1 make", '/cfg/config:1: "make": not an assignment'),
        ("source other.cfg", '/cfg/config:1: "source other.cfg": not an assignment'),
        ("A=$(cat file)", "/cfg/config:1: A: a command substitution runs a command"),
        ("A=`cat file`", "/cfg/config:1: A: a command substitution runs a command"),
        ('A="x $(date)"', "/cfg/config:1: A: a command substitution runs a command"),
        ("A=$HOME/x", "/cfg/config:1: A: $HOME is not set earlier in this file"),
        ("A=${B:-x}", "/cfg/config:1: A: ${B:-x} is a shell expansion the importer"),
        ("A=$1", "/cfg/config:1: A: $1 is one of the shell's own parameters"),
        ("A=$'x'", "/cfg/config:1: A: $'...' is bash's own quoting"),
        ("A=~/xen", "/cfg/config:1: A: ~ stands for a home directory"),
        ("A=x>y", "/cfg/config:1: A: '>' in the value would make the shell run something"),
        ("A=x|y", "/cfg/config:1: A: '|' in the value"),
        ("\nA='open", "/cfg/config:2: A: the ' is never closed"),
        ('A="open\n\n', '/cfg/config:1: A: the " is never closed'),
        ("DOMU_KERNEL[i]=x", "/cfg/config:1: DOMU_KERNEL[i]: the index [i] is not a number"),
        ("DOMU_KERNEL[$n]=x", "/cfg/config:1: DOMU_KERNEL[$n]: the index [$n] is not a number"),
        ("A=(1 [3]=x)", "/cfg/config:1: A: an element with its own [N]= inside (...)"),
        ("A=(1 2", "/cfg/config:1: A: the ( of the array is never closed"),
        ("A[0]=(1)", "/cfg/config:1: A[0]: an array cannot be an element of another array"),
    ],
)
def test_what_would_run_something_is_refused(text: str, error: str) -> None:
    with pytest.raises(HlimageError) as caught:
        read_text(text, CONFIG)
    assert str(caught.value).startswith(error), str(caught.value)
    assert "\n" not in str(caught.value)


def test_read_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_bytes(b'XEN="xen"\r\nNUM_DOMUS=0\r\n')
    assert values(read(config)) == {"XEN": {"0": "xen"}, "NUM_DOMUS": {"0": "0"}}
    with pytest.raises(HlimageError, match="no such file"):
        read(tmp_path / "absent")
    with pytest.raises(HlimageError, match="is a directory"):
        read(tmp_path)
    config.write_bytes(b"XEN=\xff\n")
    with pytest.raises(HlimageError, match="not UTF-8 text"):
        read(config)
    config.write_bytes(b"XEN=\0\n")
    with pytest.raises(HlimageError, match="NUL byte"):
        read(config)
