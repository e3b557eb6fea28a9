"""`hlimage import imagebuilder`: configs written in ImageBuilder's syntax, covering every option
of the README's parity table, become the description they mean (compared as text, since
many of the keys are newer than this checkout's config loader), or are refused with one line
naming the file, the line and the option."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hlimage.errors import HlimageError
from hlimage.importers import imagebuilder
from hlimage.importers.imagebuilder import NO_EQUIVALENT, Imported, convert, import_file

DATA = Path(__file__).parent / "imagebuilder"

EVERY_OPTION = (DATA / "every-option.config").read_text()

EVERY_OPTION_TOML = (DATA / "every-option.toml").read_text()

# Xen's own CI (automation/scripts/qemu-smoke-dom0less-arm64.sh) writes a config like this
# and appends to it per test: a later assignment wins, and DOMU_*[1] lies past NUM_DOMUS.
XEN_CI = (DATA / "xen-ci.config").read_text()

XEN_CI_TOML = (DATA / "xen-ci.toml").read_text()

PREAMBLE = """# Imported by `hlimage import imagebuilder` from {config}.
# Each comment names the ImageBuilder option a value came from; values that
# ImageBuilder gives by default are written out, since hlimage's differ.
# Build what uboot-script-gen made with:
#   {command}

"""


def run(tmp_path: Path, text: str, **options: str) -> Imported:
    config = tmp_path / "config"
    config.write_text(text)
    return convert(config, tmp_path / "hlimage.toml", **options)  # type: ignore[arg-type]


def refused(tmp_path: Path, text: str, **options: str) -> str:
    with pytest.raises(HlimageError) as caught:
        run(tmp_path, text, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message.replace(str(tmp_path), "{tmp}")


def domains(imported: Imported) -> list[dict[str, object]]:
    return list(tomllib.loads(imported.text)["domain"])


MINIMAL = 'XEN="xen"\nDEVICE_TREE="virt.dtb"\nDOM0_KERNEL="Image"\n'


def test_every_option_becomes_its_key(tmp_path: Path) -> None:
    imported = run(tmp_path, EVERY_OPTION)
    command = f"hlimage build {tmp_path}/hlimage.toml --format uboot -o {tmp_path}/uboot"
    assert imported.text == (
        PREAMBLE.format(config=tmp_path / "config", command=command) + EVERY_OPTION_TOML
    )
    assert " ".join(imported.command) == command
    assert imported.then.startswith(f"copy the files in {tmp_path}/uboot/ to the FAT partition")
    assert [w.replace(str(tmp_path), "{tmp}") for w in imported.warnings] == [
        "{tmp}/config:55: DOMU_NOBOOT[2]: domU2 is left out: it is not started at boot",
        "{tmp}/config:57: DOMU_KERNEL[3]: left out: NUM_DOMUS is 3, so ImageBuilder ignores it",
    ]
    document = tomllib.loads(imported.text)
    assert [d["name"] for d in document["domain"]] == ["dom0", "domU0", "domU1"]
    assert [p["name"] for p in document["cpupool"]] == ["cpupool_0", "cpupool_1"]


def test_xen_ci_config(tmp_path: Path) -> None:
    imported = run(tmp_path, XEN_CI)
    command = f"hlimage build {tmp_path}/hlimage.toml --format uboot -o {tmp_path}/uboot"
    assert imported.text == PREAMBLE.format(config=tmp_path / "config", command=command) + (
        XEN_CI_TOML
    )
    assert imported.then.startswith(f"serve the files in {tmp_path}/uboot/ over TFTP")
    assert [w.split(": ", 2)[1] for w in imported.warnings] == [
        "DOMU_KERNEL[1]",
        "DOMU_RAMDISK[1]",
        "DOMU_MEM[1]",
    ]


def test_imagebuilder_defaults_are_written_out(tmp_path: Path) -> None:
    text = MINIMAL + 'NUM_DOMUS=2\nDOMU_KERNEL[0]="Image"\nDOMU_MEM[0]=0\n'
    text += 'DOMU_KERNEL[1]="Image"\nDOMU_VPL011[1]=0\n'
    document = tomllib.loads(run(tmp_path, text).text)
    assert document["xen"]["cmdline"] == imagebuilder.XEN_CMD
    dom0, first, second = document["domain"]
    assert dom0 == {
        "name": "dom0",
        "kernel": "Image",
        "cmdline": imagebuilder.DOM0_CMD + " root=/dev/ram0",
        "memory": "1500M",
        "vcpus": 1,
    }
    # DOMU_MEM=0 is ImageBuilder's default too; without vpl011 there is no default console.
    assert first == {
        "name": "domU0",
        "kernel": "Image",
        "cmdline": "console=ttyAMA0",
        "memory": "512M",
        "vcpus": 1,
        "vpl011": True,
        "enhanced": "enabled",
    }
    assert "cmdline" not in second and second["vpl011"] is False


def test_a_root_in_dom0_cmd_is_kept(tmp_path: Path) -> None:
    text = MINIMAL + 'DOM0_CMD="console=hvc0 root=/dev/mmcblk0p2 rw"\n'
    assert domains(run(tmp_path, text))[0]["cmdline"] == "console=hvc0 root=/dev/mmcblk0p2 rw"


def test_without_dom0(tmp_path: Path) -> None:
    text = 'XEN="xen"\nXEN_CMD="console=dtuart dom0_mem=1G dom0_max_vcpus=2 loglvl=all"\n'
    text += 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\n'
    imported = run(tmp_path, text)
    document = tomllib.loads(imported.text)
    # As ImageBuilder: dom0's options leave Xen's command line, and xen,enhanced is off.
    assert document["xen"]["cmdline"] == "console=dtuart loglvl=all"
    assert [d["name"] for d in document["domain"]] == ["domU0"]
    assert "enhanced" not in document["domain"][0]
    assert "XEN_CMD without its dom0 options" in imported.text


def test_colours_are_ignored_with_xen_cmd_as_imagebuilder_does(tmp_path: Path) -> None:
    text = MINIMAL + 'XEN_CMD="console=dtuart"\nXEN_COLORS="0-0"\nDOM0_COLORS="1-3"\n'
    imported = run(tmp_path, text)
    document = tomllib.loads(imported.text)
    assert "colors" not in document["xen"] and "colors" not in document["domain"][0]
    assert [w.split(": ", 2)[1:] for w in imported.warnings] == [
        ["XEN_COLORS", "left out: ImageBuilder uses it only when XEN_CMD is unset"],
        ["DOM0_COLORS", "left out: ImageBuilder uses it only when XEN_CMD is unset"],
    ]


def test_static_memory_sets_the_domains_memory(tmp_path: Path) -> None:
    text = MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_MEM[0]=512\n'
    text += 'DOMU_STATIC_MEM[0]="0x50000000 0x10000000 0x70000000 0x123000"\n'
    imported = run(tmp_path, text)
    domain = domains(imported)[1]
    assert domain["memory"] == "263308K"  # ImageBuilder: the static memory's size, in KiB
    assert domain["static_mem"] == [["0x50000000", "256M"], ["0x70000000", "1164K"]]
    assert domain["direct_map"] is True  # ImageBuilder's default with static memory
    assert "DOMU_MEM[0]: left out: ImageBuilder gives the domU" in imported.warnings[0]


def test_capabilities_by_name_and_number(tmp_path: Path) -> None:
    text = 'XEN="xen"\nNUM_DOMUS=4\n'
    for index, caps in enumerate(["control|xenstore", "HARDWARE", "dom0", "3"]):
        text += f'DOMU_KERNEL[{index}]="Image"\nDOMU_CAPS[{index}]="{caps}"\n'
    got = [d["capabilities"] for d in domains(run(tmp_path, text))]
    assert got == [
        ["control", "xenstore"],
        ["hardware"],
        ["control", "hardware", "xenstore"],
        ["control", "hardware"],
    ]


def test_event_channels_on_one_side(tmp_path: Path) -> None:
    text = 'XEN="xen"\nNUM_DOMUS=3\n' + "".join(f'DOMU_KERNEL[{i}]="Image"\n' for i in range(3))
    # Both ends listed (ImageBuilder's way), and a pair listed on one end only.
    text += 'DOMU_STATIC_EVTCHNS[0]="10 1 11; 12 2 20"\nDOMU_STATIC_EVTCHNS[1]="11 0 10"\n'
    got = [d.get("event_channels") for d in domains(run(tmp_path, text))]
    assert got == [
        [
            {"port": 10, "peer": "domU1", "peer_port": 11},
            {"port": 12, "peer": "domU2", "peer_port": 20},
        ],
        None,
        None,
    ]


PATHS = """XEN="bin/xen"
DEVICE_TREE="/boards/virt.dtb"
DOM0_KERNEL="../kernels/Image"
"""


def test_paths_start_at_the_configs_directory(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "out").mkdir()
    config = tmp_path / "configs" / "config"
    config.write_text(PATHS)
    document = tomllib.loads(convert(config, tmp_path / "out" / "hlimage.toml").text)
    assert document["xen"]["efi"] == "../configs/bin/xen"
    assert document["xen"]["dtb"] == "/boards/virt.dtb"
    assert document["domain"][0]["kernel"] == "../kernels/Image"


def test_paths_start_at_directory_like_imagebuilders_d(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(PATHS)
    (tmp_path / "binaries").mkdir()
    document = tomllib.loads(
        convert(config, tmp_path / "hlimage.toml", directory=tmp_path / "binaries").text
    )
    assert document["xen"]["efi"] == "binaries/bin/xen"
    assert document["domain"][0]["kernel"] == "kernels/Image"


def test_helper_variables_are_fine_when_used(tmp_path: Path) -> None:
    text = 'BIN=/srv/binaries\nXEN="$BIN/xen"\nDOM0_KERNEL="${BIN}/Image"\n'
    document = tomllib.loads(run(tmp_path, text).text)
    assert document["xen"]["efi"] == "/srv/binaries/xen"
    assert document["domain"][0]["kernel"] == "/srv/binaries/Image"


# --- The format and its options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "load_cmd", "command", "then"),
    [
        ("", None, "--format uboot -o {tmp}/uboot", "copy the files in {tmp}/uboot/"),
        ('LOAD_CMD="tftpb"', None, "--format uboot -o {tmp}/uboot", "serve the files in"),
        ('LOAD_CMD="load mmc 0:1"', None, "--format uboot -o {tmp}/uboot", "copy the files"),
        ('LOAD_CMD="fatload usb 0:1"', None, "--format uboot -o {tmp}/uboot", "copy the files"),
        ('LOAD_CMD="load scsi 0:1"', "tftp", "--format uboot -o {tmp}/uboot", "serve the"),
        ("", "sd", "--format uboot -o {tmp}/uboot", "copy the files"),
        ("", "usb", "--format uboot -o {tmp}/uboot", "copy the files"),
        ("", "scsi", "--format uboot -o {tmp}/uboot", "copy the files"),
        ('BOOT_CMD="booti"', "virtio", "--format uboot -o {tmp}/uboot", "copy the files"),
        ('FIT="boot.fit"', "sd", "--format fit -o {tmp}/boot.scr", "copy boot.scr to the FAT"),
        ('FIT="boot.fit"', "tftp", "--format fit -o {tmp}/boot.scr.uimg", "put boot.scr.uimg"),
        ("", "fit", "--format fit -o {tmp}/boot.scr", "copy boot.scr"),
        ('BOOT_CMD="bootefi"', "sd", "--format esp -o {tmp}/esp", "copy the files in {tmp}/esp/"),
        ("EFI=y", "sd", "--format esp -o {tmp}/esp", "copy the files in {tmp}/esp/"),
        ('BOOT_CMD="bootefi"', "tftp", "--format pxe -o {tmp}/tftp", "serve {tmp}/tftp/ over"),
    ],
)
def test_output_settings_become_the_format(
    tmp_path: Path, settings: str, load_cmd: str | None, command: str, then: str
) -> None:
    options = {} if load_cmd is None else {"load_cmd": load_cmd}
    imported = run(tmp_path, MINIMAL + settings + '\nUBOOT_SCRIPT="boot.scr"\n', **options)
    shown = " ".join(imported.command).replace(str(tmp_path), "{tmp}")
    assert shown == "hlimage build {tmp}/hlimage.toml " + command
    assert imported.then.replace(str(tmp_path), "{tmp}").startswith(then)
    assert imported.warnings == ()


def test_signed_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = MINIMAL + 'FIT="boot.fit"\nFIT_ENC_KEY_DIR="keys/dev"\n'
    imported = run(tmp_path, text, load_cmd="sd")
    assert imported.command[-4:] == ("--key", "keys/dev.key", "--cert", "keys/dev.crt")


def test_a_key_without_a_fit_is_left_out(tmp_path: Path) -> None:
    imported = run(tmp_path, MINIMAL + 'FIT_ENC_KEY_DIR="keys/dev"\n')
    assert "--key" not in imported.command
    assert imported.warnings[0].endswith(
        "FIT_ENC_KEY_DIR: left out: it signs a FIT, and FIT is not set"
    )


def test_a_script_name_u_boot_does_not_look_for(tmp_path: Path) -> None:
    imported = run(tmp_path, MINIMAL + 'UBOOT_SCRIPT="xen.scr"\n')
    assert "hlimage names the script boot.scr" in imported.warnings[0]


# --- Refusals ---------------------------------------------------------------------------------

_NO_EQUIVALENT_VALUES = {
    "NUM_DT_OVERLAY": "1",
    "DT_OVERLAY": None,
    "NUM_BOOT_AUX_FILE": "1",
    "BOOT_AUX_FILE": None,
}


@pytest.mark.parametrize("name", sorted(NO_EQUIVALENT))
def test_an_option_without_an_equivalent_is_refused(tmp_path: Path, name: str) -> None:
    missing = NO_EQUIVALENT[name]
    text = MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\n'
    written = f"{name}[0]" if missing.per_domu or missing.count else name
    if missing.count:
        text += f"{missing.count}=1\n"
    text += f'{written}="1"\n'
    line = text.count("\n")
    message = refused(tmp_path, text)
    if missing.count:  # NUM_X, a line above, is named first
        written, line = missing.count, line - 1
    assert message.startswith(f"{{tmp}}/config:{line}: {written}: no hlimage equivalent: ")
    assert message.endswith(f"{missing.why}; {missing.instead}")


@pytest.mark.parametrize(
    "setting",
    [
        'BITSTREAM=""',
        "NUM_DT_OVERLAY=0",
        'DT_OVERLAY[0]="o.dtbo"',  # NUM_DT_OVERLAY is 0: ImageBuilder never reads it
        "NUM_BOOT_AUX_FILE=0",
        "DOM0_VIOMMU=0",
        "DOMU_VIOMMU[0]=0",
        "DOMU_VUART_PL011=0",
        "DOMU_DRIVER_DOMAIN[0]=0",
        'DOMU_ROOTFS[1]="rootfs.tar.gz"',  # past NUM_DOMUS
        'DOMU_PASSTHROUGH_PATHS[3]="/axi/serial@ff000000"',
        "GPT=y",
        'FDTEDIT="imagebuilder.dtb"',
        'UBOOT_SOURCE="boot.source"',
    ],
)
def test_a_setting_without_effect_is_no_error(tmp_path: Path, setting: str) -> None:
    run(tmp_path, MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\n' + setting + "\n")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            MINIMAL + 'DOMU_KERNAL[0]="Image"\n',
            "{tmp}/config:4: DOMU_KERNAL[0]: not an ImageBuilder option that hlimage knows; "
            "did you mean DOMU_KERNEL?",
        ),
        (
            MINIMAL + "FOO=1\n",
            "{tmp}/config:4: FOO: not an ImageBuilder option that hlimage knows; remove it (a "
            "helper variable is fine when the file uses it as $NAME)",
        ),
        (
            MINIMAL + "mkimage -l boot.scr\n",
            '{tmp}/config:4: "mkimage -l boot.scr": not an assignment (VAR=value); the importer '
            "reads variable assignments only and never runs the file: remove the line or "
            "write its result as VAR=value",
        ),
        (
            MINIMAL + 'XEN_CMD="console=dtuart"\nDOM0_MEM=1024\n',
            "{tmp}/config:5: DOM0_MEM: ImageBuilder refuses it with XEN_CMD set (one or the "
            "other); put dom0_mem=/dom0_max_vcpus= in XEN_CMD, or leave XEN_CMD out",
        ),
        (
            'XEN="xen"\nDOM0_CMD="console=hvc0"\nNUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\n',
            "{tmp}/config:2: DOM0_CMD: without DOM0_KERNEL there is no dom0, and ImageBuilder "
            "refuses dom0 options then; give DOM0_KERNEL, or remove the line",
        ),
        (
            MINIMAL + 'NUM_DOMUS=2\nDOMU_KERNEL[0]="Image"\n',
            "{tmp}/config:4: NUM_DOMUS: is 2, but DOMU_KERNEL[1] is not set; set "
            "DOMU_KERNEL[1], or lower NUM_DOMUS",
        ),
        (
            MINIMAL + "NUM_DOMUS=two\n",
            '{tmp}/config:4: NUM_DOMUS: "two" is not a number; write a decimal number, or '
            "hexadecimal with 0x (bash reads a leading 0 as octal)",
        ),
        (
            MINIMAL + "DOM0_MEM=0512\n",
            '{tmp}/config:4: DOM0_MEM: "0512" is not a number; write a decimal number, or '
            "hexadecimal with 0x (bash reads a leading 0 as octal)",
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_CPUPOOL[0]=0\n',
            "{tmp}/config:6: DOMU_CPUPOOL[0]: names CPUPOOL[0], but NUM_CPUPOOLS is 0; give "
            "the number of a pool that CPUPOOL[N] sets",
        ),
        (
            MINIMAL + "NUM_CPUPOOLS=1\n",
            '{tmp}/config:4: NUM_CPUPOOLS: is 1, but CPUPOOL[0] is not set; set CPUPOOL[0]="cpu@1,'
            'cpu@2 scheduler", or lower NUM_CPUPOOLS',
        ),
        (
            MINIMAL + 'NUM_CPUPOOLS=1\nCPUPOOL[0]="cpu@1, cpu@2 null"\n',
            '{tmp}/config:5: CPUPOOL[0]: "cpu@1, cpu@2 null" is not "CPUS [SCHEDULER]"; write '
            'the CPU nodes comma-separated without spaces: "cpu@1,cpu@2 null"',
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_STATIC_MEM[0]="0x50000000"\n',
            "{tmp}/config:6: DOMU_STATIC_MEM[0]: 1 numbers, not pairs of address and size; "
            'write "address size address size ...", like "0x50000000 0x10000000"',
        ),
        (
            MINIMAL + 'XEN_STATIC_HEAP="0x50000000 0"\n',
            "{tmp}/config:4: XEN_STATIC_HEAP: 0 is below 1; give 1 or more",
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_ENHANCED[0]=3\n',
            '{tmp}/config:6: DOMU_ENHANCED[0]: "3" is not 0, 1 or 2; write 0, 1 or 2',
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_COLORS[0]="0,2"\n',
            '{tmp}/config:6: DOMU_COLORS[0]: "0,2" is not a colour range; write '
            'startcolor-endcolor, like "0-3"',
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_CAPS[0]="root"\n',
            '{tmp}/config:6: DOMU_CAPS[0]: "root" is not a number; write a decimal number, or '
            "hexadecimal with 0x (bash reads a leading 0 as octal)",
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_CAPS[0]="8"\n',
            "{tmp}/config:6: DOMU_CAPS[0]: 0x8 has bits beyond control (1), hardware (2) and "
            'xenstore (4); write names joined with |, like "control|xenstore"',
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_SHARED_MEM[0]="id 0x1000"\n',
            "{tmp}/config:6: DOMU_SHARED_MEM[0]: 2 words, not ID [HOST] GUEST SIZE; write "
            '"my-shm-0 0x50000000 0x6000000 0x10000000" (HOST may be left out)',
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_STATIC_EVTCHNS[0]="10 1 11"\n',
            "{tmp}/config:6: DOMU_STATIC_EVTCHNS[0]: channel 10 names domU1, which is not booted "
            "(NUM_DOMUS is 1); name a domU that NUM_DOMUS includes",
        ),
        (
            MINIMAL + 'NUM_DOMUS=2\nDOMU_KERNEL[0]="Image"\nDOMU_KERNEL[1]="Image"\n'
            'DOMU_STATIC_EVTCHNS[0]="10 1 11; 12 1 11"\n',
            "{tmp}/config:7: DOMU_STATIC_EVTCHNS[0]: port 11 of domU1 is in two channels; give "
            "each end of a channel one peer",
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_STATIC_EVTCHNS[0]="10 0 10"\n',
            "{tmp}/config:6: DOMU_STATIC_EVTCHNS[0]: channel 10 connects domU0 to itself; name "
            "the peer",
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_VCPUS[0]=2\n'
            'DOMU_VCPU_HARD_AFFINITY[0,1]="1"\n',
            "{tmp}/config:7: DOMU_VCPU_HARD_AFFINITY[0,1]: vCPU 0 of domU0 has no affinity; "
            "hlimage's vcpu_affinity lists the vCPUs from 0 on; set "
            'DOMU_VCPU_HARD_AFFINITY[0,0] too (all the CPUs, like "0-3", to leave it free)',
        ),
        (
            MINIMAL + 'NUM_DOMUS=1\nDOMU_KERNEL[0]="Image"\nDOMU_VCPU_HARD_AFFINITY[0]="1"\n',
            "{tmp}/config:6: DOMU_VCPU_HARD_AFFINITY[0]: needs the domU and the vCPU; write "
            "DOMU_VCPU_HARD_AFFINITY[DOMU,VCPU]=...",
        ),
        (
            MINIMAL + 'DOMU_KERNEL[0,1]="Image"\n',
            "{tmp}/config:4: DOMU_KERNEL[0,1]: the index is not one number; write "
            "DOMU_KERNEL[N]=...",
        ),
        (
            MINIMAL + 'XEN[1]="xen"\n',
            "{tmp}/config:4: XEN[1]: XEN is not an array; write XEN=...",
        ),
        (
            MINIMAL + 'BOOT_CMD="bootm"\n',
            "{tmp}/config:4: BOOT_CMD: no hlimage equivalent: a uImage-wrapped Xen started with "
            "bootm; hlimage's script starts Xen with booti, and its FIT with bootm; use "
            "BOOT_CMD=booti, or FIT=boot.fit for one file that bootm starts",
        ),
        (
            MINIMAL + 'BOOT_CMD="none"\n',
            "{tmp}/config:4: BOOT_CMD: no hlimage equivalent: a script that loads and stops; "
            "hlimage's script starts Xen with booti, and its FIT with bootm; use "
            "BOOT_CMD=booti, or FIT=boot.fit for one file that bootm starts",
        ),
        (
            MINIMAL + 'BOOT_CMD="bootefi"\nFIT="boot.fit"\n',
            "{tmp}/config:5: FIT: a FIT started with bootefi has no hlimage equivalent; leave FIT "
            "out: U-Boot's bootefi starts the esp or pxe output's xen.efi",
        ),
        (
            MINIMAL + 'LOAD_CMD="nand read"\n',
            '{tmp}/config:4: LOAD_CMD: "nand read" is not a load command hlimage can stand in '
            "for: its script loads with `load` from the partition U-Boot found it on, or with "
            "tftpboot; use tftp, sd, usb, scsi or virtio (or load/fatload DEV N:P)",
        ),
        (
            'DEVICE_TREE="virt.dtb"\nDOM0_KERNEL="Image"\n',
            "{tmp}/config: XEN is not set, so there is no Xen to boot; give XEN=... (the arm64 "
            "Xen binary, such as Debian's xen.efi)",
        ),
        (
            'XEN="xen"\nNUM_DOMUS=0\n',
            "{tmp}/config: neither DOM0_KERNEL nor any domU (NUM_DOMUS) is set, so there is "
            "nothing to boot; give DOM0_KERNEL or NUM_DOMUS with DOMU_KERNEL[0]",
        ),
        (
            MINIMAL + 'DOM0_CMD="console=hvc0\nroot=/dev/ram0"\n',
            "{tmp}/config:4: DOM0_CMD: the value spans lines or holds a control character; "
            "write it on one line",
        ),
        (
            MINIMAL + "MEMORY_START=0x80000000\nMEMORY_END=0x40000000\n",
            "{tmp}/config:5: MEMORY_END: 0x40000000 is not above MEMORY_START (0x80000000); "
            "give the end of RAM",
        ),
    ],
)
def test_refused_with_the_line_and_the_option(tmp_path: Path, text: str, error: str) -> None:
    assert refused(tmp_path, text) == error


def test_load_cmd_option_is_named_as_t(tmp_path: Path) -> None:
    assert refused(tmp_path, MINIMAL, load_cmd="nand") == (
        '{tmp}/config: -t: "nand" is not a load command hlimage can stand in for: its script '
        "loads with `load` from the partition U-Boot found it on, or with tftpboot; use tftp, "
        "sd, usb, scsi or virtio (or load/fatload DEV N:P)"
    )
    assert refused(tmp_path, MINIMAL, load_cmd="fit_std").startswith(
        "{tmp}/config: -t fit_std: a FIT without a boot script"
    )


# --- Writing ----------------------------------------------------------------------------------


def test_import_file_writes_the_description(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(MINIMAL)
    output = tmp_path / "hlimage.toml"
    imported = import_file(config, output)
    assert output.read_text() == imported.text
    with pytest.raises(HlimageError, match="-o: exists; give --force to replace it"):
        import_file(config, output)
    output.write_text("edited\n")
    import_file(config, output, force=True)
    assert output.read_text() == imported.text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config", "hlimage.toml"]


def test_nothing_is_written_when_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(MINIMAL + "BITSTREAM=download.bit\n")
    with pytest.raises(HlimageError, match="BITSTREAM: no hlimage equivalent"):
        import_file(config, tmp_path / "hlimage.toml")
    assert [path.name for path in tmp_path.iterdir()] == ["config"]


def test_import_file_refusals(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(MINIMAL)
    with pytest.raises(HlimageError, match="-o: is the config itself"):
        import_file(config, config, force=True)
    with pytest.raises(HlimageError, match="-o: is a directory"):
        import_file(config, tmp_path)
    with pytest.raises(HlimageError, match="-d: not a directory"):
        import_file(config, tmp_path / "x.toml", directory=tmp_path / "absent")
    with pytest.raises(HlimageError, match=r"-o: the directory .* does not exist"):
        import_file(config, tmp_path / "absent" / "x.toml")
