"""`hlimage import imagebuilder`: an ImageBuilder config (Xen's `uboot-script-gen`) becomes an
hlimage.toml with the same meaning, and the `hlimage build` command that makes what
uboot-script-gen would have made.

The config is read as data (hlimage.importers.shellvars), never sourced. Its meaning is
ImageBuilder's own, read from `scripts/uboot-script-gen` (Xilinx's xlnx_rel_v2023.2 branch)
and the later patches on xen-devel (XEN_STATIC_HEAP, DOMU_SHARED_MEM, DOMU_ENHANCED=2, the
grant limits, DOMU_VPL011, DOMU_NR_SPIS, DOMU_CAPS, DOMU_VCPU_HARD_AFFINITY, XEN_POLICY,
DOMU_STATIC_EVTCHNS, DOMU_TRAP_UNMAP):

- ImageBuilder's defaults are written out (a domU's 512 MB and one vCPU, its `console=ttyAMA0`
  and vpl011, `xen,enhanced` when there is a dom0, dom0's 1500 MB and its command line, Xen's
  default command line), because hlimage's defaults differ;
- sizes keep ImageBuilder's units (DOM0_MEM and DOMU_MEM in MB) and become hlimage sizes;
- only the first NUM_DOMUS domUs and NUM_CPUPOOLS pools count, as in ImageBuilder;
- paths are relative to the config's directory (ImageBuilder's -d) and are written relative
  to the description's;
- where ImageBuilder refuses a config, so does the importer; where it silently ignores a
  setting, the importer leaves it out and says so; an option hlimage has no equivalent for is
  an error that names its line and says what to do instead.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hlimage.errors import HlimageError
from hlimage.importers import shellvars, tomlwriter
from hlimage.importers.shellvars import Entry, Variables
from hlimage.importers.tomlwriter import Table, Value

# Defaults of uboot-script-gen's xen_config().
DOM0_MEM_MB = 1500
DOM0_VCPUS = 1
DOM0_CMD = "console=hvc0 earlycon=xen earlyprintk=xen clk_ignore_unused"
DOMU_MEM_MB = 512
DOMU_VCPUS = 1
DOMU_CMD = "console=ttyAMA0"
# Its default XEN_CMD, less dom0_mem= and dom0_max_vcpus=: hlimage writes those from dom0's
# memory and vcpus.
XEN_CMD = "console=dtuart dtuart=serial0 bootscrub=0 vwfi=native sched=null"

# The load commands uboot-script-gen's -t names and those its README shows: over the network,
# or from a disk partition (whichever device: hlimage's script loads from where U-Boot found
# it, ${devtype} ${devnum}:${distro_bootpart}).
NETWORK_LOADS = ("tftp", "tftpb", "tftpboot")
DISK_SHORTHANDS = ("sd", "usb", "scsi", "virtio")
DISK_LOADS = ("load", "fatload", "ext4load", "ext2load")
CAPABILITY_NAMES = {"none": 0, "control": 1, "hardware": 2, "xenstore": 4, "dom0": 7, "domain0": 7}
CAPABILITY_KEYS = (("control", 1), ("hardware", 2), ("xenstore", 4))

SCALARS = (
    "MEMORY_START", "MEMORY_END", "LOAD_CMD", "BOOT_CMD", "EFI", "DEVICE_TREE", "XEN",
    "XEN_CMD", "XEN_COLORS", "XEN_STATIC_HEAP", "XEN_POLICY", "DOM0_KERNEL", "DOM0_CMD",
    "DOM0_RAMDISK", "DOM0_MEM", "DOM0_VCPUS", "DOM0_COLORS", "NUM_DOMUS", "NUM_CPUPOOLS",
    "UBOOT_SOURCE", "UBOOT_SCRIPT", "FDTEDIT", "FIT", "FIT_ENC_KEY_DIR", "GPT",
)  # fmt: skip
DOMU_ARRAYS = (
    "DOMU_KERNEL", "DOMU_RAMDISK", "DOMU_CMD", "DOMU_MEM", "DOMU_VCPUS", "DOMU_COLORS",
    "DOMU_CPUPOOL", "DOMU_ENHANCED", "DOMU_VPL011", "DOMU_NR_SPIS", "DOMU_PASSTHROUGH_DTB",
    "DOMU_STATIC_MEM", "DOMU_DIRECT_MAP", "DOMU_SHARED_MEM", "DOMU_STATIC_EVTCHNS", "DOMU_CAPS",
    "DOMU_GRANT_VER", "DOMU_GRANT_FRAMES", "DOMU_MAPTRACK_FRAMES", "DOMU_NOBOOT",
    "DOMU_TRAP_UNMAP",
)  # fmt: skip
AFFINITY = "DOMU_VCPU_HARD_AFFINITY"
"""Indexed [domU,vCPU] (an associative array in ImageBuilder)."""
POOL_ARRAYS = ("CPUPOOL",)


@dataclass(frozen=True)
class Missing:
    """An option hlimage has no equivalent for: why, and what to do instead."""

    why: str
    instead: str
    flag: bool = False
    """A 0/1 switch that only 1 turns on (0 means what leaving it out means)."""
    count: str | None = None
    """An array that only counts up to this NUM_ variable (which has no equivalent either)."""
    per_domu: bool = False
    """A DOMU_ array: only the first NUM_DOMUS elements count."""


_PASSTHROUGH = Missing(
    "hlimage does not edit the host tree's device nodes or build partial device trees",
    "mark the devices with xen,passthrough in DEVICE_TREE (fdtput) and give each domU's "
    "partial tree as DOMU_PASSTHROUGH_DTB",
)
_ROOTFS = Missing(
    "a root file system partition of ImageBuilder's disk_image; hlimage's disk image holds one "
    "FAT partition",
    "boot the domain from a ramdisk (DOM0_RAMDISK, DOMU_RAMDISK), or write the partition yourself",
)
_NO_LINUX = Missing(
    "Linux without Xen; hlimage boots Xen", "use another tool for a bare Linux boot"
)
_LOAD = Missing(
    "a load command for one file; hlimage's script loads every file from where U-Boot found "
    "the script, the disk partition or TFTP",
    "remove it",
)
_VIOMMU = Missing(
    "a virtual IOMMU, which only Xilinx's Xen has (no released Xen reads it)",
    "remove it, or set it to 0",
    flag=True,
)

NO_EQUIVALENT: dict[str, Missing] = {
    "NUM_DT_OVERLAY": Missing(
        "hlimage does not apply device-tree overlays at boot",
        "apply them to the host tree first (fdtoverlay -i board.dtb -o merged.dtb "
        "overlay.dtbo) and give DEVICE_TREE=merged.dtb",
    ),
    "DT_OVERLAY": Missing(
        "hlimage does not apply device-tree overlays at boot",
        "apply them to the host tree first (fdtoverlay -i board.dtb -o merged.dtb "
        "overlay.dtbo) and give DEVICE_TREE=merged.dtb",
        count="NUM_DT_OVERLAY",
    ),
    "BITSTREAM": Missing(
        "hlimage's boot script programs no FPGA",
        "load the bitstream from U-Boot's own environment (fpga load) before the script runs",
    ),
    "APPEND_EXTRA_CMDS": Missing(
        "hlimage writes the whole boot script and takes no extra U-Boot commands",
        "run the commands from U-Boot's environment (preboot) or edit the script's source",
    ),
    "NUM_BOOT_AUX_FILE": Missing(
        "extra files on disk_image's boot partition; hlimage's outputs hold what the boot reads",
        "copy the files to the FAT partition yourself",
    ),
    "BOOT_AUX_FILE": Missing(
        "extra files on disk_image's boot partition; hlimage's outputs hold what the boot reads",
        "copy the files to the FAT partition yourself",
        count="NUM_BOOT_AUX_FILE",
    ),
    "DOMU_PASSTHROUGH_PATHS": Missing(_PASSTHROUGH.why, _PASSTHROUGH.instead, per_domu=True),
    "PASSTHROUGH_DTS_REPO": _PASSTHROUGH,
    "LOPPER_PATH": _PASSTHROUGH,
    "LOPPER_CMD": _PASSTHROUGH,
    "XEN_PASSTHROUGH_PATHS": _PASSTHROUGH,
    "DOM0_ROOTFS": _ROOTFS,
    "DOMU_ROOTFS": Missing(_ROOTFS.why, _ROOTFS.instead, per_domu=True),
    "DOMU_DRIVER_DOMAIN": Missing(
        "the driver_domain of disk_image's xl config files; hlimage writes no xl configs",
        "set driver_domain in the domain's xl config yourself",
        flag=True,
        per_domu=True,
    ),
    "DOM0_VIOMMU": _VIOMMU,
    "DOMU_VIOMMU": Missing(_VIOMMU.why, _VIOMMU.instead, flag=True, per_domu=True),
    "DOMU_VUART_PL011": Missing(
        "the full PL011 emulation of Xilinx's Xen; upstream Xen's vpl011 is the SBSA UART that "
        "hlimage turns on for every domU (DOMU_VPL011)",
        "remove it, or set it to 0",
        flag=True,
    ),
    "FIT_ENC_UB_DTB": Missing(
        "the imported build does not edit U-Boot's control device tree",
        "drop the option and add the key to the tree with hlimage fit-key --cert DIR/HINT.crt "
        "DTB -o DTB",
    ),
    "LINUX": _NO_LINUX,
    "LINUX_CMD": _NO_LINUX,
    "LINUX_RAMDISK": _NO_LINUX,
    "LINUX_ROOTFS": _NO_LINUX,
    "XEN_LOAD": _LOAD,
    "DOM0_LOAD": _LOAD,
    "DOMU_LOAD": Missing(_LOAD.why, _LOAD.instead, per_domu=True),
}

KNOWN = (*SCALARS, *DOMU_ARRAYS, AFFINITY, *POOL_ARRAYS, *NO_EQUIVALENT)
"""Every ImageBuilder option the importer reads or refuses (the README's parity table has a
row for each)."""


@dataclass(frozen=True)
class Imported:
    text: str
    """The description."""
    command: tuple[str, ...]
    """The `hlimage build` command line that makes the boot files."""
    then: str
    """What to do with what it makes."""
    warnings: tuple[str, ...]
    """Settings ImageBuilder itself ignores here, left out of the description."""


def _size(size: int) -> str:
    """Bytes as an hlimage size: the largest binary unit that divides it."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


@dataclass
class _Domain:
    index: int
    name: str
    table: Table
    event_channels: list[dict[str, Value]] = field(default_factory=list)


class _Converter:
    def __init__(
        self, variables: Variables, base: Path, output: Path, load_cmd: str | None
    ) -> None:
        self.variables = variables
        self.path = variables.path
        self.base = base
        self.output = output
        self.output_dir = Path(os.path.abspath(output)).parent
        self.load_override = load_cmd
        self.warnings: list[tuple[int, str]] = []

    # --- reading ----------------------------------------------------------------------------

    def fail(self, entry: Entry, problem: str, fix: str) -> HlimageError:
        return HlimageError(f"{entry.written}: {problem}; {fix}", where=f"{self.path}:{entry.line}")

    def warn(self, entry: Entry, message: str) -> None:
        self.warnings.append((entry.line, f"{self.path}:{entry.line}: {entry.written}: {message}"))

    def get(self, name: str, index: str = "0") -> Entry | None:
        """A set, non-empty value: ImageBuilder tests every option with `test "$X"`, so an
        empty one is one left out."""
        entry = self.variables.get(name, index)
        return entry if entry is not None and entry.value != "" else None

    def number(self, entry: Entry, minimum: int = 0, text: str | None = None) -> int:
        word = (entry.value if text is None else text).strip()
        try:
            if re.fullmatch(r"0[xX][0-9a-fA-F]+", word):
                number = int(word, 16)
            elif re.fullmatch(r"0|[1-9][0-9]*", word):
                number = int(word)
            else:
                raise ValueError
        except ValueError:
            raise self.fail(
                entry,
                f'"{word}" is not a number',
                "write a decimal number, or hexadecimal with 0x (bash reads a leading 0 as octal)",
            ) from None
        if number < minimum:
            raise self.fail(entry, f"{number} is below {minimum}", f"give {minimum} or more")
        return number

    def flag(self, entry: Entry) -> bool:
        if entry.value not in ("0", "1"):
            raise self.fail(entry, f'"{entry.value}" is not 0 or 1', "write 0 or 1")
        return entry.value == "1"

    def text(self, entry: Entry) -> str:
        for char in entry.value:
            if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
                raise self.fail(
                    entry,
                    "the value spans lines or holds a control character",
                    "write it on one line",
                )
        return entry.value

    def file(self, entry: Entry) -> str:
        """A path relative to the config's directory, as the description's directory sees it."""
        value = self.text(entry)
        path = Path(value)
        if path.is_absolute():
            return os.path.normpath(value)
        absolute = os.path.normpath(os.path.abspath(self.base / path))
        return os.path.relpath(absolute, self.output_dir)

    def pairs(self, entry: Entry) -> list[list[str]]:
        """'base size base size ...' -> [["0x...", "256M"], ...] (static_mem, static_heap)."""
        words = entry.value.split()
        if not words or len(words) % 2:
            raise self.fail(
                entry,
                f"{len(words)} numbers, not pairs of address and size",
                'write "address size address size ...", like "0x50000000 0x10000000"',
            )
        out = []
        for address, size in zip(words[::2], words[1::2], strict=True):
            start = self.number(entry, text=address)
            length = self.number(entry, minimum=1, text=size)
            out.append([f"0x{start:x}", _size(length)])
        return out

    def colors(self, entry: Entry) -> str:
        value = entry.value.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", value)
        if not match or (match.group(2) is not None and int(match.group(2)) < int(match[1])):
            raise self.fail(
                entry,
                f'"{value}" is not a colour range',
                'write startcolor-endcolor, like "0-3"',
            )
        return value

    # --- checks over the whole file ---------------------------------------------------------

    def check_names(self) -> None:
        """Every variable is an option the importer knows, or a helper the file expands; the
        first one that is neither (in the file's order) is named."""
        firsts = [
            min(self.variables.elements[name].values(), key=lambda entry: entry.line)
            for name in self.variables.names()
            if name not in KNOWN and name not in self.variables.referenced
        ]
        if not firsts:
            return
        entry = min(firsts, key=lambda first: first.line)
        name = entry.written.split("[")[0]
        close = difflib.get_close_matches(name, KNOWN, n=1, cutoff=0.75)
        fix = (
            f"did you mean {close[0]}?"
            if close
            else "remove it (a helper variable is fine when the file uses it as $NAME)"
        )
        raise self.fail(entry, "not an ImageBuilder option that hlimage knows", fix)

    def check_shapes(self) -> None:
        for name in self.variables.names():
            for index, entry in self.variables.elements[name].items():
                if name in SCALARS or (name in NO_EQUIVALENT and not self._is_array(name)):
                    if index != "0":
                        raise self.fail(entry, f"{name} is not an array", f"write {name}=...")
                elif name == AFFINITY:
                    if "," not in index:
                        raise self.fail(
                            entry,
                            "needs the domU and the vCPU",
                            f"write {AFFINITY}[DOMU,VCPU]=...",
                        )
                elif name in KNOWN and not index.isdigit():
                    raise self.fail(entry, "the index is not one number", f"write {name}[N]=...")

    @staticmethod
    def _is_array(name: str) -> bool:
        missing = NO_EQUIVALENT.get(name)
        return missing is not None and (missing.per_domu or missing.count is not None)

    def check_missing(self, domus: int) -> None:
        """Options hlimage has no equivalent for, where they would take effect in
        ImageBuilder; in the file's order, so that the first one is named."""
        found: list[tuple[int, Entry, Missing]] = []
        for name, missing in NO_EQUIVALENT.items():
            limit = domus if missing.per_domu else None
            if missing.count is not None:
                counted = self.get(missing.count)
                limit = self.number(counted) if counted is not None else 0
            for index, entry in self.variables.elements.get(name, {}).items():
                if entry.value == "" or (missing.flag and entry.value != "1"):
                    continue
                if missing.count is None and name.startswith("NUM_") and entry.value == "0":
                    continue
                if limit is not None and int(index) >= limit:
                    continue
                found.append((entry.line, entry, missing))
        if found:
            _, entry, missing = min(found, key=lambda item: item[0])
            raise self.fail(entry, f"no hlimage equivalent: {missing.why}", missing.instead)

    # --- the description ------------------------------------------------------------------

    def convert(self) -> Imported:
        self.check_names()
        self.check_shapes()
        domus_entry = self.get("NUM_DOMUS")
        domus = self.number(domus_entry) if domus_entry is not None else 0
        self.check_missing(domus)
        self.ignored_beyond(domus)
        output = self.outputs()
        xen = self.xen()
        tables: list[Table] = [Table("image"), xen]
        tables[0].add("arch", "arm64", "ImageBuilder boots arm64 Xen from U-Boot")
        uboot = self.window()
        if uboot is not None:
            tables.append(uboot)
        pools = self.cpupools()
        tables += [pool for pool, _ in pools]
        domains = self.domains(domus, [name for _, name in pools])
        if not domains:
            raise HlimageError(
                "neither DOM0_KERNEL nor any domU (NUM_DOMUS) is set, so there is nothing to "
                "boot; give DOM0_KERNEL or NUM_DOMUS with DOMU_KERNEL[0]",
                where=self.path,
            )
        tables += domains
        command, then = output
        preamble = [
            f"Imported by `hlimage import imagebuilder` from {self.path}.",
            "Each comment names the ImageBuilder option a value came from; values that",
            "ImageBuilder gives by default are written out, since hlimage's differ.",
            "Build what uboot-script-gen made with:",
            "  " + shlex.join(command),
        ]
        return Imported(
            tomlwriter.document(preamble, tables),
            command,
            then,
            tuple(text for _, text in sorted(self.warnings)),
        )

    def ignored_beyond(self, domus: int) -> None:
        """domU options past NUM_DOMUS: ImageBuilder never reads them."""
        for name in (*DOMU_ARRAYS, AFFINITY):
            for index, entry in self.variables.elements.get(name, {}).items():
                if int(index.split(",")[0]) >= domus and entry.value != "":
                    self.warn(entry, f"left out: NUM_DOMUS is {domus}, so ImageBuilder ignores it")

    def outputs(self) -> tuple[tuple[str, ...], str]:
        """The format and its options, from LOAD_CMD, BOOT_CMD, FIT and FIT_ENC_KEY_DIR."""
        load = self.get("LOAD_CMD")
        load_text = self.load_override if self.load_override is not None else None
        if load_text is None and load is not None:
            load_text = load.value
        fit = self.get("FIT")
        fit_wanted = fit is not None
        network = False
        if load_text is not None:
            words = load_text.split()
            first = words[0] if words else ""
            if self.load_override is not None and load_text in ("fit", "fit_std"):
                if load_text == "fit_std":
                    raise HlimageError(
                        "-t fit_std: a FIT without a boot script, which ImageBuilder itself "
                        "advises against for dom0less; use -t fit (hlimage's FIT carries its "
                        "own script)",
                        where=self.path,
                    )
                fit_wanted = True
            elif first in NETWORK_LOADS:
                network = True
            elif load_text not in DISK_SHORTHANDS and first not in DISK_LOADS:
                where = load if self.load_override is None else None
                problem = (
                    f'"{load_text}" is not a load command hlimage can stand in for: its script '
                    "loads with `load` from the partition U-Boot found it on, or with tftpboot"
                )
                fix = "use tftp, sd, usb, scsi or virtio (or load/fatload DEV N:P)"
                if where is not None:
                    raise self.fail(where, problem, fix)
                raise HlimageError(f"-t: {problem}; {fix}", where=self.path)
        boot = self.get("BOOT_CMD")
        efi = self.get("EFI")
        boot_cmd = boot.value if boot is not None else "booti"
        if boot is None and efi is not None:
            if efi.value.lower() in ("y", "yes", "1"):
                boot_cmd = "bootefi"
            elif efi.value.lower() not in ("n", "no", "0"):
                raise self.fail(efi, f'"{efi.value}" is not y or n', "write EFI=y or EFI=n")
        if boot is not None and boot_cmd not in ("booti", "bootefi"):
            if boot_cmd in ("bootm", "none"):
                why = (
                    "a uImage-wrapped Xen started with bootm"
                    if boot_cmd == "bootm"
                    else "a script that loads and stops"
                )
                raise self.fail(
                    boot,
                    f"no hlimage equivalent: {why}; hlimage's script starts Xen with booti, "
                    "and its FIT with bootm",
                    "use BOOT_CMD=booti, or FIT=boot.fit for one file that bootm starts",
                )
            raise self.fail(
                boot, f'"{boot_cmd}" is not a boot command', "use booti, bootm, bootefi or none"
            )
        toml = str(self.output)
        here = self.output.parent
        key_dir = self.get("FIT_ENC_KEY_DIR")
        if key_dir is not None and not fit_wanted:
            self.warn(key_dir, "left out: it signs a FIT, and FIT is not set")
        if boot_cmd == "bootefi":
            if fit_wanted:
                entry = fit if fit is not None else boot
                assert entry is not None
                raise self.fail(
                    entry,
                    "a FIT started with bootefi has no hlimage equivalent",
                    "leave FIT out: U-Boot's bootefi starts the esp or pxe output's xen.efi",
                )
            if network:
                out = here / "tftp"
                then = (
                    f"serve {out}/ over TFTP with its boot file named in DHCP; U-Boot's bootefi "
                    "starts it (the README.txt in it has a dnsmasq line)"
                )
                return ("hlimage", "build", toml, "--format", "pxe", "-o", str(out)), then
            out = here / "esp"
            then = (
                f"copy the files in {out}/ to the FAT partition U-Boot boots from; its bootefi "
                "starts EFI/BOOT/BOOTAA64.EFI"
            )
            return ("hlimage", "build", toml, "--format", "esp", "-o", str(out)), then
        if fit_wanted:
            name = "boot.scr.uimg" if network else "boot.scr"
            out = here / name
            command: tuple[str, ...] = ("hlimage", "build", toml, "--format", "fit", "-o", str(out))
            if key_dir is not None:
                hint = Path(self.file(key_dir))
                key = self.output_dir / hint.with_name(hint.name + ".key")
                cert = self.output_dir / hint.with_name(hint.name + ".crt")
                command += ("--key", _shown(key), "--cert", _shown(cert))
            then = (
                f"put {name} at the TFTP root: U-Boot's DHCP boot runs it"
                if network
                else f"copy {name} to the FAT partition U-Boot boots from: its default boot runs it"
            )
            return command, then
        out = here / "uboot"
        self.script_names()
        then = (
            f"serve the files in {out}/ over TFTP: U-Boot's DHCP boot reads boot.scr.uimg"
            if network
            else f"copy the files in {out}/ to the FAT partition U-Boot boots from: its default "
            "boot runs boot.scr"
        )
        return ("hlimage", "build", toml, "--format", "uboot", "-o", str(out)), then

    def script_names(self) -> None:
        script = self.get("UBOOT_SCRIPT")
        if script is not None and Path(script.value).name not in ("boot.scr", "boot.scr.uimg"):
            self.warn(
                script,
                "hlimage names the script boot.scr (and boot.scr.uimg), the names U-Boot's "
                "default boot looks for",
            )

    def window(self) -> Table | None:
        start = self.get("MEMORY_START")
        end = self.get("MEMORY_END")
        if start is None and end is None:
            return None
        table = Table("uboot", comment="the RAM U-Boot loads everything into")
        first = self.number(start) if start is not None else None
        last = self.number(end) if end is not None else None
        if first is not None and last is not None and last <= first:
            assert end is not None
            raise self.fail(
                end, f"0x{last:x} is not above MEMORY_START (0x{first:x})", "give the end of RAM"
            )
        if first is not None:
            table.add("memory_start", f"0x{first:x}", "MEMORY_START")
        if last is not None:
            table.add("memory_end", f"0x{last:x}", "MEMORY_END (the first address past it)")
        return table

    def xen(self) -> Table:
        table = Table("xen")
        xen = self.get("XEN")
        if xen is None:
            linux = self.get("LINUX")
            raise HlimageError(
                "XEN is not set, so there is no Xen to boot; give XEN=... (the arm64 Xen "
                "binary, such as Debian's xen.efi)"
                + (" (LINUX without Xen has no hlimage equivalent)" if linux else ""),
                where=self.path,
            )
        table.add("efi", self.file(xen), "XEN")
        tree = self.get("DEVICE_TREE")
        if tree is not None:
            table.add("dtb", self.file(tree), "DEVICE_TREE")
        command = self.get("XEN_CMD")
        dom0 = self.get("DOM0_KERNEL")
        colors = self.get("XEN_COLORS")
        if command is not None:
            for name in ("DOM0_MEM", "DOM0_VCPUS"):
                given = self.get(name)
                if given is not None:
                    raise self.fail(
                        given,
                        "ImageBuilder refuses it with XEN_CMD set (one or the other)",
                        "put dom0_mem=/dom0_max_vcpus= in XEN_CMD, or leave XEN_CMD out",
                    )
            cmdline = self.text(command)
            source = "XEN_CMD"
            if dom0 is None:
                # As ImageBuilder: without dom0, its options leave Xen's command line.
                words = [word for word in cmdline.split() if not word.startswith("dom0")]
                if words != cmdline.split():
                    source = "XEN_CMD without its dom0 options (there is no DOM0_KERNEL)"
                    cmdline = " ".join(words)
            for ignored in (colors, self.get("DOM0_COLORS")):
                if ignored is not None:
                    self.warn(ignored, "left out: ImageBuilder uses it only when XEN_CMD is unset")
            colors = None
        else:
            cmdline, source = XEN_CMD, "XEN_CMD unset: ImageBuilder's default"
        table.add("cmdline", cmdline, source)
        policy = self.get("XEN_POLICY")
        if policy is not None:
            table.add("xsm", self.file(policy), "XEN_POLICY")
        heap = self.get("XEN_STATIC_HEAP")
        if heap is not None:
            table.add("static_heap", self.pairs(heap), "XEN_STATIC_HEAP")
        if colors is not None:
            table.add("colors", self.colors(colors), "XEN_COLORS")
        return table

    def cpupools(self) -> list[tuple[Table, str]]:
        count_entry = self.get("NUM_CPUPOOLS")
        count = self.number(count_entry) if count_entry is not None else 0
        pools = []
        for index, element in self.variables.elements.get("CPUPOOL", {}).items():
            if int(index) >= count and element.value:
                self.warn(element, f"left out: NUM_CPUPOOLS is {count}, so ImageBuilder ignores it")
        for number in range(count):
            entry = self.get("CPUPOOL", str(number))
            if entry is None:
                assert count_entry is not None
                raise self.fail(
                    count_entry,
                    f"is {count}, but CPUPOOL[{number}] is not set",
                    f'set CPUPOOL[{number}]="cpu@1,cpu@2 scheduler", or lower NUM_CPUPOOLS',
                )
            words = entry.value.split()
            if len(words) > 2 or not words:
                raise self.fail(
                    entry,
                    f'"{entry.value}" is not "CPUS [SCHEDULER]"',
                    'write the CPU nodes comma-separated without spaces: "cpu@1,cpu@2 null"',
                )
            cpus = [cpu for cpu in words[0].split(",") if cpu]
            name = f"cpupool_{number}"  # ImageBuilder's node name under /chosen
            table = Table("cpupool", array=True)
            table.add("name", name, f"ImageBuilder's /chosen/{name}")
            table.add("cpus", cpus, f"CPUPOOL[{number}]: nodes under /cpus")
            if len(words) == 2:
                table.add("scheduler", words[1], f"CPUPOOL[{number}]")
            pools.append((table, name))
        return pools

    def domains(self, domus: int, pools: list[str]) -> list[Table]:
        tables: list[Table] = []
        dom0 = self.get("DOM0_KERNEL")
        # From the elements set, not range(NUM_DOMUS): a huge NUM_DOMUS fails at its first
        # missing DOMU_KERNEL, not after a long loop.
        any_caps = any(
            int(index) < domus and entry.value != ""
            for index, entry in self.variables.elements.get("DOMU_CAPS", {}).items()
        )
        if dom0 is not None:
            tables.append(self.dom0(dom0, any_caps))
        else:
            for name in ("DOM0_MEM", "DOM0_VCPUS", "DOM0_COLORS", "DOM0_CMD", "DOM0_RAMDISK"):
                given = self.get(name)
                if given is not None:
                    raise self.fail(
                        given,
                        "without DOM0_KERNEL there is no dom0, and ImageBuilder refuses dom0 "
                        "options then",
                        "give DOM0_KERNEL, or remove the line",
                    )
        included: dict[int, _Domain] = {}
        for index in range(domus):
            skipped = self.get("DOMU_NOBOOT", str(index))
            if skipped is not None:
                self.warn(skipped, f"domU{index} is left out: it is not started at boot")
                continue
            included[index] = self.domu(index, dom0 is not None, pools)
        self.event_channels(included, domus)
        for domain in included.values():
            if domain.event_channels:
                domain.table.add(
                    "event_channels",
                    domain.event_channels,
                    "DOMU_STATIC_EVTCHNS (each pair once)",
                )
            tables.append(domain.table)
        return tables

    def dom0(self, kernel: Entry, any_caps: bool) -> Table:
        table = Table("domain", array=True)
        table.add("name", "dom0")
        table.add("kernel", self.file(kernel), "DOM0_KERNEL")
        ramdisk = self.get("DOM0_RAMDISK")
        if ramdisk is not None:
            table.add("initrd", self.file(ramdisk), "DOM0_RAMDISK")
        command = self.get("DOM0_CMD")
        cmdline = self.text(command) if command is not None else DOM0_CMD
        source = "DOM0_CMD" if command is not None else "DOM0_CMD unset: ImageBuilder's default"
        if not re.search(r"(^|\s)root=", cmdline):
            # uboot-script-gen adds it when the command line has no root= (and no DOM0_ROOTFS,
            # which has no equivalent).
            cmdline += " root=/dev/ram0"
            source += ", and the root=/dev/ram0 ImageBuilder adds"
        table.add("cmdline", cmdline, source)
        if self.get("XEN_CMD") is None:
            memory = self.get("DOM0_MEM")
            megabytes = self.number(memory, minimum=1) if memory is not None else DOM0_MEM_MB
            table.add(
                "memory",
                _size(megabytes << 20),
                "DOM0_MEM (MB)" if memory is not None else "DOM0_MEM unset: ImageBuilder's 1500",
            )
            vcpus = self.get("DOM0_VCPUS")
            table.add(
                "vcpus",
                self.number(vcpus, minimum=1) if vcpus is not None else DOM0_VCPUS,
                "DOM0_VCPUS" if vcpus is not None else "DOM0_VCPUS unset: ImageBuilder's 1",
            )
            colors = self.get("DOM0_COLORS")
            if colors is not None:
                table.add("colors", self.colors(colors), "DOM0_COLORS")
        if any_caps:
            table.add(
                "capabilities",
                ["control", "hardware", "xenstore"],
                "dom0's, written out because a domU has DOMU_CAPS",
            )
        return table

    def domu(self, index: int, has_dom0: bool, pools: list[str]) -> _Domain:
        def get(name: str) -> Entry | None:
            return self.get(name, str(index))

        name = f"domU{index}"  # ImageBuilder's node name under /chosen
        table = Table("domain", array=True)
        domain = _Domain(index, name, table)
        table.add("name", name, f"ImageBuilder's /chosen/{name}")
        kernel = get("DOMU_KERNEL")
        if kernel is None:
            count = self.get("NUM_DOMUS")
            assert count is not None
            raise self.fail(
                count,
                f"is {count.value}, but DOMU_KERNEL[{index}] is not set",
                f"set DOMU_KERNEL[{index}], or lower NUM_DOMUS",
            )
        table.add("kernel", self.file(kernel), kernel.written)
        ramdisk = get("DOMU_RAMDISK")
        if ramdisk is not None:
            table.add("initrd", self.file(ramdisk), ramdisk.written)
        vpl011_entry = get("DOMU_VPL011")
        vpl011 = self.flag(vpl011_entry) if vpl011_entry is not None else True
        command = get("DOMU_CMD")
        if command is not None:
            table.add("cmdline", self.text(command), command.written)
        elif vpl011:
            table.add("cmdline", DOMU_CMD, f"DOMU_CMD[{index}] unset: ImageBuilder's default")

        static = get("DOMU_STATIC_MEM")
        static_ranges = self.pairs(static) if static is not None else []
        memory = get("DOMU_MEM")
        megabytes = self.number(memory) if memory is not None else 0
        if static is not None:
            total = sum(_bytes(size) for _, size in static_ranges)
            if megabytes and megabytes << 20 != total and memory is not None:
                self.warn(memory, "left out: ImageBuilder gives the domU its static memory's size")
            table.add("memory", _size(total), f"the size of {static.written}, as ImageBuilder")
        elif megabytes:
            assert memory is not None
            table.add("memory", _size(megabytes << 20), f"{memory.written} (MB)")
        else:
            table.add("memory", f"{DOMU_MEM_MB}M", f"DOMU_MEM[{index}] unset: ImageBuilder's 512")
        vcpus_entry = get("DOMU_VCPUS")
        vcpus = self.number(vcpus_entry, minimum=1) if vcpus_entry is not None else DOMU_VCPUS
        table.add(
            "vcpus",
            vcpus,
            vcpus_entry.written if vcpus_entry else f"DOMU_VCPUS[{index}] unset: ImageBuilder's 1",
        )
        table.add(
            "vpl011",
            vpl011,
            vpl011_entry.written if vpl011_entry else f"DOMU_VPL011[{index}] unset: on",
        )
        self.enhanced(table, get("DOMU_ENHANCED"), index, has_dom0)
        caps = get("DOMU_CAPS")
        if caps is not None:
            table.add("capabilities", self.capabilities(caps), caps.written)
        if static is not None:
            table.add("static_mem", static_ranges, static.written)
            direct = get("DOMU_DIRECT_MAP")
            table.add(
                "direct_map",
                self.flag(direct) if direct is not None else True,
                direct.written if direct else f"DOMU_DIRECT_MAP[{index}] unset: on",
            )
        else:
            direct = get("DOMU_DIRECT_MAP")
            if direct is not None:
                self.warn(direct, "left out: ImageBuilder uses it only with DOMU_STATIC_MEM")
        colors = get("DOMU_COLORS")
        if colors is not None:
            table.add("colors", self.colors(colors), colors.written)
        pool = get("DOMU_CPUPOOL")
        if pool is not None:
            number = self.number(pool)
            if number >= len(pools):
                raise self.fail(
                    pool,
                    f"names CPUPOOL[{number}], but NUM_CPUPOOLS is {len(pools)}",
                    "give the number of a pool that CPUPOOL[N] sets",
                )
            table.add("cpupool", pools[number], pool.written)
        for option, key in (("DOMU_NR_SPIS", "nr_spis"), ("DOMU_GRANT_VER", "max_grant_version"),
                            ("DOMU_GRANT_FRAMES", "max_grant_frames"),
                            ("DOMU_MAPTRACK_FRAMES", "max_maptrack_frames")):  # fmt: skip
            entry = get(option)
            if entry is not None:
                table.add(key, self.number(entry), entry.written)
        passthrough = get("DOMU_PASSTHROUGH_DTB")
        if passthrough is not None:
            table.add("passthrough_dtb", self.file(passthrough), passthrough.written)
        shared = get("DOMU_SHARED_MEM")
        if shared is not None:
            table.add("shared_mem", [self.shared_mem(shared)], shared.written)
        affinity = self.affinity(index, vcpus)
        if affinity:
            table.add("vcpu_affinity", affinity, f"{AFFINITY}[{index},N]")
        trap = get("DOMU_TRAP_UNMAP")
        if trap is not None:
            table.add("trap_unmapped_accesses", self.flag(trap), trap.written)
        return domain

    def enhanced(self, table: Table, entry: Entry | None, index: int, has_dom0: bool) -> None:
        if entry is None:
            if has_dom0:
                table.add(
                    "enhanced", "enabled", f"DOMU_ENHANCED[{index}] unset: on, as there is dom0"
                )
            return
        values = {"0": None, "1": "enabled", "2": "no-xenstore"}
        if entry.value not in values:
            raise self.fail(entry, f'"{entry.value}" is not 0, 1 or 2', "write 0, 1 or 2")
        chosen = values[entry.value]
        if chosen is not None:
            table.add("enhanced", chosen, entry.written)

    def capabilities(self, entry: Entry) -> list[str]:
        mask = 0
        for word in entry.value.replace("|", " ").lower().split():
            if word in CAPABILITY_NAMES:
                mask |= CAPABILITY_NAMES[word]
            else:
                mask |= self.number(entry, text=word)
        if mask & ~7:
            raise self.fail(
                entry,
                f"0x{mask:x} has bits beyond control (1), hardware (2) and xenstore (4)",
                'write names joined with |, like "control|xenstore"',
            )
        return [name for name, bit in CAPABILITY_KEYS if mask & bit]

    def shared_mem(self, entry: Entry) -> dict[str, Value]:
        words = entry.value.split()
        if len(words) not in (3, 4):
            raise self.fail(
                entry,
                f"{len(words)} words, not ID [HOST] GUEST SIZE",
                'write "my-shm-0 0x50000000 0x6000000 0x10000000" (HOST may be left out)',
            )
        region: dict[str, Value] = {"id": words[0]}
        numbers = [self.number(entry, text=word) for word in words[1:]]
        if len(numbers) == 3:
            region["host"] = f"0x{numbers[0]:x}"
        region["guest"] = f"0x{numbers[-2]:x}"
        if numbers[-1] == 0:
            raise self.fail(entry, "the size is 0", "give the region's size")
        region["size"] = _size(numbers[-1])
        return region

    def affinity(self, index: int, vcpus: int) -> list[str]:
        pinned: dict[int, Entry] = {}
        for key, entry in self.variables.elements.get(AFFINITY, {}).items():
            domu, vcpu = (int(part) for part in key.split(","))
            if domu != index or entry.value == "":
                continue
            if vcpu >= vcpus:
                self.warn(
                    entry, f"left out: domU{index} has {vcpus} vCPU(s), so ImageBuilder ignores it"
                )
                continue
            self.text(entry)
            if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", entry.value.strip()):
                raise self.fail(
                    entry,
                    f'"{entry.value}" is not a list of CPUs',
                    'write CPU numbers and ranges, like "0-2,4"',
                )
            pinned[vcpu] = entry
        if not pinned:
            return []
        out = []
        for vcpu in range(max(pinned) + 1):
            if vcpu not in pinned:
                later = pinned[min(number for number in pinned if number > vcpu)]
                raise self.fail(
                    later,
                    f"vCPU {vcpu} of domU{index} has no affinity; hlimage's vcpu_affinity lists "
                    "the vCPUs from 0 on",
                    f'set {AFFINITY}[{index},{vcpu}] too (all the CPUs, like "0-3", to leave it '
                    "free)",
                )
            out.append(pinned[vcpu].value.strip())
        return out

    def event_channels(self, included: dict[int, _Domain], domus: int) -> None:
        """ImageBuilder's DOMU_STATIC_EVTCHNS="port peer peer_port; ..." lists a channel on
        both of its ends; hlimage's event_channels on one. Each pair goes on the first domU
        that names it; both ends must agree."""
        partner: dict[tuple[int, int], tuple[int, int]] = {}
        declared: set[frozenset[tuple[int, int]]] = set()
        for index in sorted(included):
            entry = self.get("DOMU_STATIC_EVTCHNS", str(index))
            if entry is None:
                continue
            for definition in entry.value.split(";"):
                words = definition.split()
                if not words:
                    continue
                if len(words) != 3:
                    raise self.fail(
                        entry,
                        f'"{definition.strip()}" is not "PORT PEER_DOMU PEER_PORT"',
                        'write channels like "10 1 11; 12 1 13"',
                    )
                port, peer, peer_port = (self.number(entry, text=word) for word in words)
                local, remote = (index, port), (peer, peer_port)
                if local == remote:
                    raise self.fail(
                        entry, f"channel {port} connects domU{index} to itself", "name the peer"
                    )
                if peer not in included:
                    raise self.fail(
                        entry,
                        f"channel {port} names domU{peer}, which is not booted "
                        f"(NUM_DOMUS is {domus})",
                        "name a domU that NUM_DOMUS includes",
                    )
                for end, other in ((local, remote), (remote, local)):
                    if partner.setdefault(end, other) != other:
                        raise self.fail(
                            entry,
                            f"port {end[1]} of domU{end[0]} is in two channels",
                            "give each end of a channel one peer",
                        )
                if frozenset((local, remote)) in declared:
                    continue  # its other end, listed on the peer too
                declared.add(frozenset((local, remote)))
                included[index].event_channels.append(
                    {"port": port, "peer": included[peer].name, "peer_port": peer_port}
                )


def _bytes(size: str) -> int:
    units = {"K": 10, "M": 20, "G": 30}
    return int(size[:-1]) << units[size[-1]] if size[-1] in units else int(size)


def _shown(path: Path) -> str:
    """A path for a printed command: relative to the current directory when under it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return os.path.normpath(os.path.abspath(path))


def convert(
    config: Path,
    output: Path,
    *,
    directory: Path | None = None,
    load_cmd: str | None = None,
) -> Imported:
    """The description an ImageBuilder config means, for writing to `output`. `directory` is
    what the config's paths are relative to (ImageBuilder's -d; default the config's own),
    `load_cmd` stands for ImageBuilder's -t."""
    variables = shellvars.read(config)
    base = directory if directory is not None else config.parent
    return _Converter(variables, base, output, load_cmd).convert()


def import_file(
    config: Path,
    output: Path,
    *,
    directory: Path | None = None,
    load_cmd: str | None = None,
    force: bool = False,
) -> Imported:
    """Convert `config` and write the description to `output` atomically: all of it, or
    nothing."""
    from hlimage.plumbing.atomic import atomic_file

    if os.path.exists(output) and not force:
        if os.path.isdir(output):
            raise HlimageError(
                "-o: is a directory; name the description file to write", where=output
            )
        raise HlimageError(
            "-o: exists; give --force to replace it, or name another file", where=output
        )
    if directory is not None and not directory.is_dir():
        raise HlimageError(
            "-d: not a directory; give the directory the config's paths start from", where=directory
        )
    if os.path.abspath(output) == os.path.abspath(config):
        raise HlimageError("-o: is the config itself; name another file", where=output)
    imported = convert(config, output, directory=directory, load_cmd=load_cmd)
    with atomic_file(output) as stream:
        stream.write(imported.text.encode())
    return imported
