"""U-Boot's fit_check_sign, which Debian's u-boot-tools does not ship, built from Debian's
source of the installed u-boot-tools.

fit_check_sign is the host build of U-Boot's own verified-boot check: the tests prove hlimage's
FIT signatures with it. `python -m tests.support.uboot_tools` downloads the u-boot source
package with `apt-get source` (private apt state, as tests.support.payloads does), builds the
tools-only configuration (a few seconds) and keeps the one binary in the payload cache.
Running it again does nothing when the binary is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.payloads import CACHE, Apt

FIT_CHECK_SIGN = CACHE / "u-boot-tools" / "fit_check_sign"


def installed_version() -> str | None:
    """The source version of the installed u-boot-tools (mkimage), to build the same U-Boot."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${source:Version}", "u-boot-tools"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode:
        return None
    return result.stdout.strip() or None


def build(verbose: bool = True) -> Path:
    if FIT_CHECK_SIGN.is_file():
        return FIT_CHECK_SIGN
    apt = Apt("bookworm", CACHE / "apt", source_packages=True)
    version = installed_version()
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        work = Path(scratch)
        wanted = f"u-boot={version}" if version else "u-boot"
        if verbose:
            print(f"uboot_tools: apt-get source {wanted}", file=sys.stderr)
        try:
            apt.run("apt-get", "-q", "source", "--download-only", wanted, cwd=work)
        except SystemExit:
            # The mirror may have moved past the installed version; the tool has not changed
            # its checks within one Debian release.
            apt.run("apt-get", "-q", "source", "--download-only", "u-boot", cwd=work)
        dsc = sorted(work.glob("u-boot_*.dsc"))[-1]
        tree = work / "src"
        subprocess.run(
            ["dpkg-source", "--no-check", "-x", str(dsc), str(tree)],
            check=True, capture_output=True,
        )  # fmt: skip
        jobs = str(os.cpu_count() or 1)
        for target in (["tools-only_defconfig"], ["-j", jobs, "tools-only"]):
            result = subprocess.run(
                ["make", *target], cwd=tree, capture_output=True, text=True, check=False
            )
            if result.returncode:
                raise SystemExit(f"make {' '.join(target)} in U-Boot failed:\n{result.stderr}")
        FIT_CHECK_SIGN.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / "tools" / "fit_check_sign", FIT_CHECK_SIGN)
        FIT_CHECK_SIGN.chmod(0o755)
    return FIT_CHECK_SIGN


def main() -> None:
    path = build()
    print(f"uboot_tools: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
