"""U-Boot's Flattened Image Tree (FIT): one v17 device tree holding images and configurations.

The tree is what `mkimage -f image.its` writes: `/timestamp`, `/description`,
`#address-cells`; `/images/NAME` with description, inline `data`, type, arch, os,
compression, load and entry, and a `hash-1` subnode (sha256) on every image; `/configurations`
with a default and its conf nodes (kernel, fdt, ramdisk, loadables). `/images/default` names a
script image, which is what U-Boot's `source` runs when the FIT is a boot script.

Payloads are streamed: the layout comes from the files' sizes, each `data` value is copied from
its file in chunks while its sha256 is computed, and the hash node's value, which follows the
data, is written once the data has passed. Nothing the size of a payload is held in memory.

A configuration can be signed as U-Boot's verified boot checks it (boot/image-fit-sig.c,
fit_config_check_sig): a `signature-1` node under the conf whose `value` is an RSA PKCS#1 v1.5
signature over the regions of fdt_find_regions for its `hashed-nodes` (every property of those
nodes but `data`-like ones, which the images' hashes stand for), followed by the string block's
first `hashed-strings` bytes. `add_public_key` writes the public key node that `mkimage -K`
writes into U-Boot's control tree, which `fit_check_sign -k` and U-Boot read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fdt
from hlimage.formats.fdt import DeviceTree, Node
from hlimage.formats.payload import BytesPayload, Digest, Payload, Region

if TYPE_CHECKING:
    # cryptography is imported where a signature is made: an unsigned FIT (most) never pays
    # its 30-100 ms import.
    from cryptography.hazmat.primitives.asymmetric import rsa

HASH_ALGO = "sha256"
HASH_NODE = "hash-1"
SIGNATURE_NODE = "signature-1"
SCRIPT_TYPE = "script"
# U-Boot's hashed-regions code leaves these out of a configuration's signature
# (fit_config_check_sig's exc_prop): the image hashes cover the data instead.
EXCLUDED_FROM_SIGNATURE = ("data", "data-size", "data-position", "data-offset")
SIGN_IMAGE_PROPERTIES = ("fdt", "kernel", "ramdisk", "loadables")
# U-Boot's RSA code (lib/rsa) knows these key sizes.
RSA_BITS = (2048, 3072, 4096)
# CONFIG_FIT_SIGNATURE_MAX_SIZE's default: a larger signed FIT is refused ("Total size too
# large") by a U-Boot built with the default, whatever its signature.
SIGNATURE_MAX_SIZE = 0x10000000
U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class FitImage:
    """One image under /images. `source` is a file or a payload of known size (streamed), or
    small bytes (a script)."""

    name: str
    type: str
    source: Path | bytes | Payload
    description: str = ""
    arch: str | None = "arm64"
    os: str | None = "linux"
    compression: str = "none"
    load: int | None = None
    entry: int | None = None

    def payload(self) -> Payload:
        if isinstance(self.source, Payload):
            return self.source
        if isinstance(self.source, bytes):
            return BytesPayload(self.source, f"FIT image {self.name}")
        return Region(self.source)

    def size(self) -> int:
        exact = self.payload().exact_size
        if exact is None:
            # The data's length is in the tree before the data: it must be known first.
            raise FormatError(f"FIT image {self.name}: its size is not known before it is made")
        return exact


@dataclass(frozen=True)
class FitConfiguration:
    """One conf node: which images bootm takes. Names refer to FitImage names."""

    name: str
    description: str = ""
    kernel: str | None = None
    fdt: str | None = None
    ramdisk: str | None = None
    loadables: tuple[str, ...] = ()

    def references(self) -> dict[str, list[str]]:
        """Each image-naming property with the names it gives, in the order they are written."""
        named: dict[str, list[str]] = {}
        for key in ("kernel", "fdt", "ramdisk"):
            value = getattr(self, key)
            if value is not None:
                named[key] = [value]
        if self.loadables:
            named["loadables"] = list(self.loadables)
        return named


@dataclass(frozen=True)
class FitSigner:
    """How to sign every configuration: the private key and the key's name in the key tree."""

    private_key: rsa.RSAPrivateKey
    key_name_hint: str
    signer_version: str
    """What signed it, as mkimage records its own version: the caller's (hlimage's) version."""
    signer_name: str = "hlimage"

    @property
    def bits(self) -> int:
        return self.private_key.key_size

    @property
    def algo(self) -> str:
        return f"{HASH_ALGO},rsa{self.bits}"


@dataclass(frozen=True)
class Fit:
    description: str
    timestamp: int
    images: Sequence[FitImage]
    configurations: Sequence[FitConfiguration] = ()
    default_configuration: str | None = None
    """The conf bootm takes with no name given; the first one when not set."""
    default_image: str | None = None
    """A script image for /images/default: what `source` runs when the FIT is a boot script."""


@dataclass(frozen=True)
class FitResult:
    size: int
    sha256: dict[str, str] = field(default_factory=dict)
    """Each image's data digest, by image name."""


def size(fit: Fit, signer: FitSigner | None = None) -> int:
    """The number of bytes `write` will write, known before any payload is read."""
    return _plan(fit, signer).layout.totalsize


def write(fit: Fit, out: BinaryIO, signer: FitSigner | None = None) -> FitResult:
    """Write the FIT at the output's position, streaming each payload once."""
    plan = _plan(fit, signer)
    layout = plan.layout
    filled = _prefilled(plan)
    digests: dict[str, str] = {}
    written = 0
    for piece in layout.pieces:
        if isinstance(piece, bytes):
            out.write(piece)
            written += len(piece)
            continue
        if piece.name == "data":
            image = plan.images[piece.path]
            # The hash node after the data needs its sha256: computed beside the copy.
            digest = Digest()
            size = 0
            for view in image.payload().views():
                digest.feed(view)
                out.write(view)
                size += len(view)
            if size != piece.length:
                digest.close()
                raise HlimageError(
                    f"changed size while the FIT was written ({piece.length} bytes before, "
                    f"{size} now); write the FIT again",
                    where=_label(image),
                )
            digests[image.name] = digest.hexdigest()
            written += piece.length
            continue
        out.write(_hole_value(plan, piece, filled, digests, signer))
        written += piece.length
    return FitResult(written, digests)


def _label(image: FitImage) -> str:
    if isinstance(image.source, Path):
        return str(image.source)
    if isinstance(image.source, Payload):
        return image.source.label
    return f"FIT image {image.name}"


class FitPayload(Payload):
    """The FIT as a stream of chunks, for a container that copies it in (a disk image's FAT
    volume): the same bytes `write` writes, each payload read once. `result` holds the images'
    digests once the chunks have all been taken."""

    def __init__(self, fit: Fit, signer: FitSigner | None = None, label: str = "FIT") -> None:
        self.fit = fit
        self.signer = signer
        self.label = label
        self._plan = _plan(fit, signer)
        self.result: FitResult | None = None

    def size_bound(self) -> int:
        return self._plan.layout.totalsize

    @property
    def exact_size(self) -> int:
        return self._plan.layout.totalsize

    def chunks(self) -> Iterator[bytes]:
        plan = self._plan
        layout = plan.layout
        filled = _prefilled(plan)
        digests: dict[str, str] = {}
        for piece in layout.pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            if piece.name == "data":
                image = plan.images[piece.path]
                digest = hashlib.sha256()
                size = 0
                for chunk in image.payload().chunks():
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
                if size != piece.length:
                    raise HlimageError(
                        f"changed size while the FIT was written ({piece.length} bytes before, "
                        f"{size} now); write the FIT again",
                        where=_label(image),
                    )
                digests[image.name] = digest.hexdigest()
                continue
            yield _hole_value(plan, piece, filled, digests, self.signer)
        self.result = FitResult(layout.totalsize, digests)


def _prefilled(plan: _Plan) -> dict[tuple[str, str], bytes]:
    filled: dict[tuple[str, str], bytes] = {}
    for conf_path in plan.signed:
        strings_path = f"{conf_path}/{SIGNATURE_NODE}"
        filled[(strings_path, "hashed-strings")] = fdt.cells(0, plan.layout.size_dt_strings)
    return filled


def _hole_value(
    plan: _Plan,
    piece: fdt.Hole,
    filled: dict[tuple[str, str], bytes],
    digests: dict[str, str],
    signer: FitSigner | None,
) -> bytes:
    """The bytes of a hole other than an image's data, once everything before it is known."""
    key = (piece.path, piece.name)
    if key in filled:
        value = filled[key]
    elif piece.name == "value" and piece.path.endswith(f"/{HASH_NODE}"):
        image = plan.images[piece.path.rsplit("/", 1)[0]]
        value = bytes.fromhex(digests[image.name])
        filled[key] = value
    elif piece.name == "value" and signer is not None:
        conf_path = piece.path.rsplit("/", 1)[0]
        value = _signature(plan.layout, filled, plan.hashed_nodes[conf_path], signer)
        filled[key] = value
    else:
        raise AssertionError(f"FIT hole {key} has no writer")
    if len(value) != piece.length:
        raise AssertionError(f"FIT hole {key}: {len(value)} bytes for {piece.length}")
    return value


@dataclass
class _Plan:
    layout: fdt.Layout
    images: dict[str, FitImage]
    """By node path."""
    signed: list[str]
    """Paths of signed conf nodes."""
    hashed_nodes: dict[str, list[str]]
    """The hashed-nodes list of each signed conf, by its path."""


def _plan(fit: Fit, signer: FitSigner | None) -> _Plan:
    _check(fit, signer)
    sizes = {image.name: image.size() for image in fit.images}
    addresses = [
        value for image in fit.images for value in (image.load, image.entry) if value is not None
    ]
    address_cells = 2 if any(value > U32_MAX for value in addresses) else 1

    tree = DeviceTree()
    root = tree.root
    root.set("timestamp", fdt.u32(fit.timestamp))
    root.set("description", fdt.string(fit.description))
    root.set("#address-cells", fdt.u32(address_cells))
    images = root.add_child(Node("images"))
    if fit.default_image is not None:
        images.set("default", fdt.string(fit.default_image))
    holes: dict[tuple[str, str], int] = {}
    by_path: dict[str, FitImage] = {}
    for image in fit.images:
        path = f"/images/{image.name}"
        by_path[path] = image
        node = images.add_child(Node(image.name))
        node.set("description", fdt.string(image.description or image.name))
        node.set("data", b"")
        holes[(path, "data")] = sizes[image.name]
        node.set("type", fdt.string(image.type))
        if image.arch is not None:
            node.set("arch", fdt.string(image.arch))
        if image.os is not None:
            node.set("os", fdt.string(image.os))
        node.set("compression", fdt.string(image.compression))
        for name in ("load", "entry"):
            value = getattr(image, name)
            if value is not None:
                node.set(name, _address(value, address_cells))
        hash_node = node.add_child(Node(HASH_NODE))
        hash_node.set("algo", fdt.string(HASH_ALGO))
        hash_node.set("value", b"")
        holes[(f"{path}/{HASH_NODE}", "value")] = hashlib.sha256().digest_size

    signed: list[str] = []
    hashed_nodes: dict[str, list[str]] = {}
    if fit.configurations:
        confs = root.add_child(Node("configurations"))
        default = fit.default_configuration or fit.configurations[0].name
        confs.set("default", fdt.string(default))
        for conf in fit.configurations:
            path = f"/configurations/{conf.name}"
            node = confs.add_child(Node(conf.name))
            node.set("description", fdt.string(conf.description or conf.name))
            for key, names in conf.references().items():
                node.set(key, fdt.strings(names))
            if signer is None:
                continue
            sign_images = [key for key in SIGN_IMAGE_PROPERTIES if key in conf.references()]
            nodes = _hashed_nodes(conf, sign_images)
            signature = node.add_child(Node(SIGNATURE_NODE))
            signature.set("algo", fdt.string(signer.algo))
            signature.set("key-name-hint", fdt.string(signer.key_name_hint))
            signature.set("sign-images", fdt.strings(sign_images))
            # The properties mkimage's fit_image_write_sig adds, in its order.
            signature.set("value", b"")
            holes[(f"{path}/{SIGNATURE_NODE}", "value")] = signer.bits // 8
            signature.set("signer-name", fdt.string(signer.signer_name))
            signature.set("signer-version", fdt.string(signer.signer_version))
            signature.set("timestamp", fdt.u32(fit.timestamp))
            signature.set("hashed-nodes", fdt.strings(nodes))
            # <0 size>: the offset is a legacy field that must be 0; the size, known only once
            # the string block is laid out, covers it whole.
            signature.set("hashed-strings", b"")
            holes[(f"{path}/{SIGNATURE_NODE}", "hashed-strings")] = 8
            signed.append(path)
            hashed_nodes[path] = nodes
    layout = tree.layout(holes)
    return _Plan(layout, by_path, signed, hashed_nodes)


def _hashed_nodes(conf: FitConfiguration, sign_images: Iterable[str]) -> list[str]:
    """The nodes a configuration signature covers, as mkimage lists them
    (tools/image-host.c, fit_config_get_hash_list): the root, the conf, then for each image
    the conf names under sign-images, its node and its hash nodes."""
    nodes = ["/", f"/configurations/{conf.name}"]
    references = conf.references()
    for key in sign_images:
        for name in references[key]:
            nodes += [f"/images/{name}", f"/images/{name}/{HASH_NODE}"]
    return nodes


def _address(value: int, address_cells: int) -> bytes:
    if address_cells == 1:
        return fdt.u32(value)
    return fdt.u64(value)


def _check(fit: Fit, signer: FitSigner | None) -> None:
    if not 0 <= fit.timestamp <= U32_MAX:
        raise FormatError(f"FIT timestamp {fit.timestamp} does not fit in 32 bits")
    if not fit.images:
        raise FormatError("a FIT needs at least one image")
    names: set[str] = set()
    for image in fit.images:
        _check_name(image.name, "image")
        if image.name in names:
            raise FormatError(f"FIT image name {image.name!r} is used twice")
        names.add(image.name)
        for what in ("load", "entry"):
            value = getattr(image, what)
            if value is not None and not 0 <= value <= fdt.U64_MAX:
                raise FormatError(f"FIT image {image.name}: {what} {value} is not a 64-bit address")
        if isinstance(image.source, bytes) and not image.source and image.type == SCRIPT_TYPE:
            raise FormatError(f"FIT script image {image.name} is empty; give it a script")
    types = {image.name: image.type for image in fit.images}
    if fit.default_image is not None:
        if fit.default_image not in names:
            raise FormatError(f"FIT default image {fit.default_image!r} is not one of the images")
        if types[fit.default_image] != SCRIPT_TYPE:
            raise FormatError(
                f"FIT default image {fit.default_image!r} is a {types[fit.default_image]} image; "
                "`source` runs only a script image"
            )
    confs: set[str] = set()
    for conf in fit.configurations:
        _check_name(conf.name, "configuration")
        if conf.name in confs:
            raise FormatError(f"FIT configuration name {conf.name!r} is used twice")
        confs.add(conf.name)
        for key, referenced in conf.references().items():
            for name in referenced:
                if name not in names:
                    raise FormatError(
                        f"FIT configuration {conf.name}: {key} names image {name!r}, "
                        "which the FIT does not have"
                    )
        if signer is not None and not conf.references():
            raise FormatError(f"FIT configuration {conf.name} names no image, so cannot be signed")
    if fit.default_configuration is not None and fit.default_configuration not in confs:
        raise FormatError(
            f"FIT default configuration {fit.default_configuration!r} is not one of its "
            "configurations"
        )
    if signer is not None:
        if not fit.configurations:
            raise FormatError("a signed FIT needs a configuration: the signature is on it")
        if signer.bits not in RSA_BITS:
            raise FormatError(
                f"a {signer.bits}-bit RSA key: U-Boot verifies only "
                f"{', '.join(map(str, RSA_BITS))}-bit keys"
            )
        _check_name(signer.key_name_hint, "key name hint")


def _check_name(name: str, what: str) -> None:
    # U-Boot with signatures refuses unit addresses in a FIT (fdt_check_no_at): libfdt would
    # match "kernel@1" for "kernel" and verify the wrong node.
    if not name or not name.isascii() or any(ch in name for ch in "/@\0") or not name.isprintable():
        raise FormatError(f"FIT {what} name {name!r}: use printable ASCII without '/' or '@'")


def _blob_bytes(
    layout: fdt.Layout, filled: dict[tuple[str, str], bytes], offset: int, length: int
) -> bytes:
    """Bytes [offset, offset + length) of the blob, from its pieces and the holes filled."""
    out = bytearray()
    position = 0
    end = offset + length
    for piece in layout.pieces:
        size = piece.length if isinstance(piece, fdt.Hole) else len(piece)
        start, stop = max(offset, position), min(end, position + size)
        if start < stop:
            if isinstance(piece, fdt.Hole):
                value = filled.get((piece.path, piece.name))
                if value is None:
                    raise AssertionError(f"signed region covers {piece.path}:{piece.name}")
            else:
                value = piece
            out += value[start - position : stop - position]
        position += size
        if position >= end:
            break
    return bytes(out)


def signed_regions(layout: fdt.Layout, hashed_nodes: Sequence[str]) -> list[tuple[int, int]]:
    """The (offset, size) regions a conf signature covers, as fit_config_check_sig finds them
    (with the whole string block, which is what hashed-strings here always says)."""
    regions = fdt.find_regions(layout, hashed_nodes, EXCLUDED_FROM_SIGNATURE)
    return [*regions, (layout.off_dt_strings, layout.size_dt_strings)]


def _signature(
    layout: fdt.Layout,
    filled: dict[tuple[str, str], bytes],
    hashed_nodes: Sequence[str],
    signer: FitSigner,
) -> bytes:
    message = b"".join(
        _blob_bytes(layout, filled, offset, length)
        for offset, length in signed_regions(layout, hashed_nodes)
    )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return signer.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())


# The public key, as mkimage -K writes it (lib/rsa/rsa-sign.c, rsa_add_verify_data).


def public_key_node(
    public_key: rsa.RSAPublicKey, key_name_hint: str, *, required: str | None = "conf"
) -> Node:
    """/signature/key-NAME for U-Boot's control tree. `required = "conf"` makes U-Boot (and
    fit_check_sign) refuse a configuration that this key has not signed; without it a FIT
    with no valid signature is accepted."""
    _check_name(key_name_hint, "key name hint")
    numbers = public_key.public_numbers()
    bits = public_key.key_size
    if bits not in RSA_BITS:
        raise FormatError(f"a {bits}-bit RSA key: U-Boot verifies only {RSA_BITS} bits")
    modulus = numbers.n
    # Montgomery constants U-Boot's verifier uses instead of computing them at boot.
    n0_inverse = (-pow(modulus, -1, 1 << 32)) % (1 << 32)
    r_squared = pow(2, 2 * bits, modulus)
    node = Node(f"key-{key_name_hint}")
    node.set("key-name-hint", fdt.string(key_name_hint))
    node.set("rsa,num-bits", fdt.u32(bits))
    node.set("rsa,n0-inverse", fdt.u32(n0_inverse))
    node.set("rsa,exponent", fdt.u64(numbers.e))
    node.set("rsa,modulus", modulus.to_bytes(bits // 8, "big"))
    node.set("rsa,r-squared", r_squared.to_bytes(bits // 8, "big"))
    node.set("algo", fdt.string(f"{HASH_ALGO},rsa{bits}"))
    if required is not None:
        node.set("required", fdt.string(required))
    return node


def add_public_key(
    tree: DeviceTree,
    public_key: rsa.RSAPublicKey,
    key_name_hint: str,
    *,
    required: str | None = "conf",
) -> None:
    """Put the key under /signature of `tree` (U-Boot's control DTB), replacing one of its
    name."""
    parent = tree.ensure("/signature")
    node = public_key_node(public_key, key_name_hint, required=required)
    existing = parent.child(node.name)
    if existing is None:
        parent.add_child(node)
    else:
        existing.properties = node.properties
        existing.children = node.children
