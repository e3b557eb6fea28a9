"""`--format fit`: one FIT image that holds Xen, its device tree, every module and its own
boot script.

Named boot.scr on a disk's first partition (boot.scr.uimg at a TFTP root), it is what U-Boot's
default boot runs: `source` takes the FIT's /images/default, a script image that runs
`bootm ${scriptaddr}`, and bootm puts Xen, the device tree and every loadable at its `load`
address and starts Xen (docs/uboot.md). Every image has a sha256 hash node; with --key the
configuration is signed (sha256,rsa2048 for a 2048-bit key) as U-Boot's verified boot checks
it. The payloads are streamed into the file, never held in memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hlimage import __version__
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fdt, fit
from hlimage.formats.payload import Payload, Region
from hlimage.model import Arch, System
from hlimage.outputs import registry
from hlimage.outputs import uboot as uboot_output
from hlimage.planned import Role
from hlimage.plumbing.atomic import atomic_file
from hlimage.report import Artifact, BuildReport
from hlimage.source_date import source_date_epoch
from hlimage.xen import uboot
from hlimage.xen.modules import Module

SCRIPT_IMAGE = "script"
XEN_IMAGE = "xen"
FDT_IMAGE = "fdt"
CONFIGURATION = "conf-1"
IMAGE_TYPES = {
    Role.KERNEL: "kernel",
    Role.RAMDISK: "ramdisk",
    Role.PASSTHROUGH_DTB: "flat_dt",
    Role.XSM: "firmware",
}
"""bootm loads a loadable whatever its type; the type is what `mkimage -l` shows."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True)
class FitBoot:
    memory_plan: uboot.MemoryPlan
    fit: fit.Fit
    images: dict[str, Module]
    """The module each loadable image holds, by image name."""


class _Measured(Payload):
    """A payload made at build time, whose size was counted beforehand: its bytes are made
    again when the FIT is written (which checks that the size still holds)."""

    def __init__(self, payload: Payload, size: int) -> None:
        self.payload = payload
        self.size = size
        self.label = payload.label

    def size_bound(self) -> int:
        return self.size

    @property
    def exact_size(self) -> int:
        return self.size

    def chunks(self) -> Iterator[bytes]:
        return self.payload.chunks()


def image_names(found: Sequence[Module]) -> list[str]:
    """One FIT image per module, even for one input loaded twice (each domain has its own
    copy in memory): DOMAIN-ROLE, made unique."""
    names: list[str] = []
    used = {SCRIPT_IMAGE, XEN_IMAGE, FDT_IMAGE}
    for module in found:
        owner = module.domain.name if module.domain is not None else "xen"
        base = _UNSAFE.sub("_", f"{owner}-{module.role.value}")
        name, number = base, 2
        while name in used:
            name = f"{base}-{number}"
            number += 1
        used.add(name)
        names.append(name)
    return names


def _description(
    system: System,
    memory_plan: uboot.MemoryPlan,
    script: str,
    dtb: bytes,
    found: Sequence[Module],
    names: Sequence[str],
    sizes: Sequence[int] | None,
) -> fit.Fit:
    assert system.xen.efi is not None
    xen = memory_plan.xen.address
    images = [
        fit.FitImage(
            SCRIPT_IMAGE, "script", script.encode("ascii"), description="boot script: bootm"
        ),
        fit.FitImage(XEN_IMAGE, "kernel", system.xen.efi, description="Xen", load=xen, entry=xen),
        fit.FitImage(
            FDT_IMAGE, "flat_dt", dtb, description="host device tree",
            load=memory_plan.dtb.address,
        ),
    ]  # fmt: skip
    for index, (module, name) in enumerate(zip(found, names, strict=True)):
        payload = module.payload
        source: Path | Payload = payload
        if isinstance(payload, Region) and payload.offset == 0:
            source = payload.path
        elif payload.exact_size is None:
            if sizes is None:
                raise AssertionError(f"module {module.name} has no known size")
            source = _Measured(payload, sizes[index])
        images.append(
            fit.FitImage(
                name, IMAGE_TYPES[module.role], source, description=uboot.module_label(module),
                load=memory_plan.slot_of(module).address,
            )
        )  # fmt: skip
    configuration = fit.FitConfiguration(
        CONFIGURATION,
        description=f"Xen ({system.name})",
        kernel=XEN_IMAGE,
        fdt=FDT_IMAGE,
        loadables=tuple(names),
    )
    title = system.title or f"Xen ({system.name})"
    return fit.Fit(
        f"{title}, written by hlimage", source_date_epoch(), images, (configuration,),
        default_image=SCRIPT_IMAGE,
    )  # fmt: skip


def boot(
    system: System,
    found: Sequence[Module],
    sizes: Sequence[int] | None = None,
    signer: fit.FitSigner | None = None,
) -> FitBoot:
    """The memory plan and the FIT of modules of known size (`sizes`, or their payloads').

    U-Boot reads the FIT to scriptaddr, so everything goes above it, and the FIT carries the
    addresses: its size is found by trying. The device tree is padded to the size the plan
    bounds it by, so that only the script's memory map can move the FIT's size, and the slot
    it is given only ever grows, so this ends.
    """
    version = uboot_output.xen_version(system)
    names = image_names(found)
    fit_size = 0
    while True:
        memory_plan = uboot.plan(
            system, found, script_size=fit_size, module_sizes=sizes, version=version
        )
        script = uboot.fit_script(system, memory_plan)
        tree = uboot.host_tree(system, memory_plan, version).build()
        dtb = fdt.padded(tree, memory_plan.dtb.size)
        description = _description(system, memory_plan, script, dtb, found, names, sizes)
        try:
            size = fit.size(description, signer)
        except FormatError as error:
            raise HlimageError(f"--format fit: {error}") from None
        if size <= fit_size:
            break
        fit_size = size
    if size > fit.SIGNATURE_MAX_SIZE and signer is not None:
        raise HlimageError(
            f"--key: a signed FIT of {size} bytes is over the {fit.SIGNATURE_MAX_SIZE >> 20} "
            "MiB a U-Boot built with its default CONFIG_FIT_SIGNATURE_MAX_SIZE verifies; leave "
            "--key out or make the modules smaller",
            where=system.source,
        )
    return FitBoot(memory_plan, description, dict(zip(names, found, strict=True)))


def key_name_hint(stem: str) -> str:
    """The key-name-hint of the key in STEM.key, or of the certificate STEM.crt: the names
    mkimage -k DIR gives its key files, so that one stem names the key both ways."""
    return _UNSAFE.sub("_", stem) or "hlimage"


def signer_of(signing: Any) -> fit.FitSigner | None:
    """The FIT signer of a --key (trust.SigningKey), named by the key file's stem."""
    if signing is None:
        return None
    from hlimage.secureboot import sign

    private = sign.load_private_key(signing.key_pem, signing.password)
    signer = fit.FitSigner(private, key_name_hint(signing.name), __version__)
    if signer.bits not in fit.RSA_BITS:
        raise HlimageError(
            f"--key: a {signer.bits}-bit RSA key; U-Boot verifies FIT signatures of "
            f"{', '.join(map(str, fit.RSA_BITS))}-bit keys only"
        )
    return signer


# The key U-Boot verifies with, in its control device tree: what `mkimage -K u-boot.dtb -r` adds
# when it signs, done from the certificate alone.

CONTROL_TREE_LIMIT = 16 << 20
"""Far above any U-Boot's control device tree (tens of KiB): a larger blob is something else,
most likely a FIT, and is refused before it is read."""


@dataclass(frozen=True)
class ControlKey:
    blob: bytes
    """The control device tree with the key."""
    node: str
    """Its path: /signature/key-HINT."""
    algo: str
    replaced: bool
    """The tree had another key of that name, which this one replaces."""
    also_required: list[str]
    """The tree's other keys with required = "conf": U-Boot wants every one of them to have
    signed a FIT's configuration (its default required-mode, "all")."""


def _public_key_of(cert: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    from hlimage.secureboot import sign

    try:
        pem = cert.read_bytes()
    except OSError as error:
        raise HlimageError(f"--cert {cert}: cannot read it: {error.strerror}") from None
    # The first certificate is the key's, as in `hlimage sign` (any chain follows it).
    public = sign.load_certificates(pem, f"--cert {cert}")[0].public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        kinds = [(ec.EllipticCurvePublicKey, "an EC"), (ed25519.Ed25519PublicKey, "an Ed25519"),
                 (ed448.Ed448PublicKey, "an Ed448"), (dsa.DSAPublicKey, "a DSA")]  # fmt: skip
        kind = next((name for cls, name in kinds if isinstance(public, cls)), "a non-RSA")
        raise HlimageError(
            f"--cert {cert}: {kind} key; U-Boot verifies FIT signatures of RSA keys only: give "
            "the certificate of the RSA key the FIT is signed with"
        )
    if public.key_size not in fit.RSA_BITS:
        raise HlimageError(
            f"--cert {cert}: a {public.key_size}-bit RSA key; U-Boot verifies FIT signatures "
            f"of {', '.join(map(str, fit.RSA_BITS))}-bit keys only"
        )
    return public


def _control_tree(dtb: Path) -> fdt.DeviceTree:
    control = "give U-Boot's control device tree (u-boot.dtb; for QEMU, -machine dumpdtb=FILE)"
    try:
        with dtb.open("rb") as stream:
            head = stream.read(fdt.HEADER_SIZE_V16)
            magic = int.from_bytes(head[:4], "big")
            totalsize = int.from_bytes(head[4:8], "big")
            if len(head) < fdt.HEADER_SIZE_V16 or magic != fdt.FDT_MAGIC:
                raise HlimageError(f"not a device tree (no 0xd00dfeed magic); {control}", where=dtb)
            if totalsize > CONTROL_TREE_LIMIT:
                raise HlimageError(
                    f"a device tree of {totalsize} bytes, far larger than a U-Boot control "
                    f"device tree (a FIT image?); {control}",
                    where=dtb,
                )
            data = head + stream.read(totalsize - len(head))
    except OSError as error:
        raise HlimageError(f"cannot read it: {error.strerror}", where=dtb) from None
    try:
        tree = fdt.parse(data)
    except FormatError as error:
        raise HlimageError(f"{error}; {control}", where=dtb) from None
    if tree.node("/images") is not None:
        raise HlimageError(
            "a FIT image (it has /images), not U-Boot's control device tree: the key goes into "
            f"the tree U-Boot verifies with, the signature is in the FIT already; {control}",
            where=dtb,
        )
    return tree


def add_control_key(dtb: Path, cert: Path, hint: str | None = None) -> ControlKey:
    """U-Boot's control device tree `dtb` with the public key of `cert` as
    /signature/key-HINT, required = "conf": a U-Boot built with that tree boots only a FIT
    whose configuration the key signed. HINT is the FIT signature's key-name-hint, by default
    from the certificate's file name as `build --key` takes it from the key's (dev.crt and
    dev.key: dev). The rest of the tree is kept, other keys included."""
    public = _public_key_of(cert)
    name = key_name_hint(cert.stem) if hint is None else hint
    try:
        node = fit.public_key_node(public, name)
    except FormatError:
        raise HlimageError(
            f"--key-name-hint {name!r}: use printable ASCII without '/' or '@' (the name the "
            "FIT's signature gives its key)"
        ) from None
    tree = _control_tree(dtb)
    parent = tree.node("/signature")
    existing = parent.child(node.name) if parent is not None else None
    material = ("rsa,modulus", "rsa,exponent")
    replaced = existing is not None and any(existing.get(k) != node.get(k) for k in material)
    also_required = []
    if parent is not None:
        for child in parent.children:
            # U-Boot reads the value as a C string (strcmp with "conf").
            required = (child.get("required") or b"").split(b"\0")[0]
            if child.name != node.name and required == b"conf":
                also_required.append(child.name)
    fit.add_public_key(tree, public, name)
    return ControlKey(
        tree.build(), f"/signature/{node.name}", f"{fit.HASH_ALGO},rsa{public.key_size}",
        replaced, also_required,
    )  # fmt: skip


def plan(system: System) -> list[str]:
    found = uboot_output.modules(system)
    return uboot.summary(boot(system, found, uboot_output.measured_sizes(found)).memory_plan)


def artifacts(planned: FitBoot, digests: dict[str, str], prefix: str = "") -> list[Artifact]:
    """What the FIT holds, image by image (named PREFIX + image name)."""
    out = []
    for image in planned.fit.images:
        module = planned.images.get(image.name)
        role = {SCRIPT_IMAGE: "config", XEN_IMAGE: "xen", FDT_IMAGE: "dtb"}.get(image.name)
        source = image.source
        label = str(source) if isinstance(source, Path) else ""
        if module is not None:
            role = module.role.value
            label = module.payload.label
        out.append(
            Artifact(
                f"{prefix}{image.name}", role or "", image.size(), digests[image.name], label,
                module.domain_name if module is not None else None,
            )
        )  # fmt: skip
    return out


def build(system: System, output: Path, signing: Any = None) -> BuildReport:
    signer = signer_of(signing)
    report = BuildReport("fit", output)
    with uboot_output.spooled(uboot_output.modules(system), output) as sized:
        planned = boot(system, sized, signer=signer)
        with atomic_file(output) as out:
            result = fit.write(planned.fit, out, signer)
    report.artifacts = artifacts(planned, result.sha256)
    return report


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output, options.signing)


registry.register(
    registry.OutputFormat(
        name="fit",
        summary="one FIT image U-Boot boots as boot.scr: Xen, its DTB, every module and the "
        "script (sha256 hashes; --key signs it)",
        writes=registry.Writes.FILE,
        plan=plan,
        build=_build,
        example="boot.scr",
        signing=registry.Signing.SELF,
        arches=frozenset({Arch.ARM64}),
    )
)
