"""End-to-end boots: build with hlimage, boot in QEMU, wait for every domain's marker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hlimage import qemu
from tests.conftest import require
from tests.support import payloads


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def qemu_x86(cache: Path) -> str:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 not installed")
    require(qemu.OVMF_CODE.is_file(), f"{qemu.OVMF_CODE} missing (package ovmf)")
    return qemu.X86_64


@pytest.fixture(scope="session")
def qemu_arm64(cache: Path) -> str:
    require(shutil.which("qemu-system-aarch64") is not None, "qemu-system-arm not installed")
    require(qemu.AAVMF.is_file(), f"{qemu.AAVMF} missing (package qemu-efi-aarch64)")
    return qemu.ARM64


@pytest.fixture(scope="session")
def qemu_uboot(cache: Path) -> str:
    """arm64 QEMU with Debian's U-Boot as its firmware (u-boot-qemu)."""
    require(shutil.which("qemu-system-aarch64") is not None, "qemu-system-arm not installed")
    require(qemu.UBOOT.is_file(), f"{qemu.UBOOT} missing (package {qemu.UBOOT_PACKAGE})")
    return qemu.ARM64


@pytest.fixture(params=payloads.XEN_VERSIONS)
def xen_version(request: pytest.FixtureRequest) -> str:
    """Each boot test runs once per Debian Xen release (ids [4.17], [4.20]); a test that
    parametrizes xen_version itself runs on the releases it names instead."""
    version: str = request.param
    return version


LOGS = Path(__file__).resolve().parents[2] / "out" / "boot-logs"


@pytest.fixture
def boot_log(request: pytest.FixtureRequest) -> Path:
    """Where a test's console log goes (kept after the run for reading failures)."""
    name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    return LOGS / f"{name}.log"
