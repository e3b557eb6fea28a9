#!/bin/sh
# Buildroot post-image script: Xen boot media built by hlimage from BINARIES_DIR.
#
#   BR2_ROOTFS_POST_IMAGE_SCRIPT="/path/to/hlimage/contrib/buildroot/post-image.sh"
#   BR2_ROOTFS_POST_SCRIPT_ARGS="--format disk"
#
# Buildroot runs it with BINARIES_DIR as the first argument (and in the environment), then the
# words of BR2_ROOTFS_POST_SCRIPT_ARGS, which every post-build and post-image script receives:
# arguments that are not this script's are skipped with a note.
#
# Inputs, from BINARIES_DIR: xen.efi (unified, esp, disk, pxe) and xen.gz or xen (the grub
# formats on x86); bzImage (x86_64) or Image / Image.gz (arm64); rootfs.cpio.gz (or .xz, .zst,
# .lz4, .bz2, .lzma, .lzo, plain .cpio: BR2_TARGET_ROOTFS_CPIO) as dom0's initramfs; on arm64 a
# host device tree (--dtb, or the only *.dtb there). Buildroot's own xen package installs only
# the `xen` ELF: xen.efi comes from a Xen built with EFI support (a package of your own).
#
# Outputs, into BINARIES_DIR, each with OUTPUT.manifest.json beside it: xen-unified.efi,
# xen-esp/, xen-disk.img, xen-grub/, xen-grub.efi, xen-pxe/.
#
# Options:
#   --format F        unified, esp, disk, grub, grub-standalone or pxe; repeat for several
#                     (default: disk)
#   --description F   a description of your own (hlimage init writes one); its paths name the
#                     staged files: xen.efi, xen.gz, vmlinuz (x86_64) or Image (arm64),
#                     initrd.img, board.dtb, and every --file by its name
#   --file F          stage one more file (a domU kernel, a FLASK policy) under its name
#   --xen-cmdline S   Xen's command line (default: a serial console and full logging)
#   --dom0-cmdline S  dom0's command line (default: console=hvc0)
#   --dom0-memory M   dom0's memory, like 1G (default: Xen's choice)
#   --dtb F           arm64: the host device tree (a file in BINARIES_DIR, or a path)
#   --size S          --format disk: the image's size, like 2G
#   --arch A          x86_64 or arm64 (default: from BR2_CONFIG, or from the kernel found)
# Each option also takes the form --option=value. HLIMAGE names the hlimage command (default:
# HOST_DIR/bin/hlimage when there, else hlimage on PATH). SOURCE_DATE_EPOCH, which Buildroot
# exports for BR2_REPRODUCIBLE, sets the disk image's FAT timestamps.
set -eu

die() {
	printf 'post-image.sh (hlimage): %s\n' "$*" >&2
	exit 1
}

toml_string() {
	# A TOML basic string's content: a backslash or a double quote gets a backslash.
	printf '%s' "$1" | sed 's/[\\"]/\\&/g'
}

binaries=${1:-${BINARIES_DIR:-}}
[ -n "$binaries" ] || die "no BINARIES_DIR: give it as the first argument, as Buildroot does"
[ -d "$binaries" ] || die "BINARIES_DIR $binaries is not a directory"
binaries=$(cd "$binaries" && pwd)
[ $# -eq 0 ] || shift

formats=""
description=""
files=""
xen_cmdline=""
dom0_cmdline="console=hvc0"
dom0_memory=""
dtb=""
size=""
arch=""
while [ $# -gt 0 ]; do
	option=$1
	case "$option" in
	--*=*)
		value=${option#*=}
		option=${option%%=*}
		shift
		;;
	--format | --description | --file | --xen-cmdline | --dom0-cmdline | --dom0-memory | --dtb | --size | --arch)
		[ $# -ge 2 ] || die "$option needs a value"
		value=$2
		shift 2
		;;
	*)
		printf 'post-image.sh (hlimage): skipping argument %s (not one of this script'"'"'s)\n' "$option" >&2
		shift
		continue
		;;
	esac
	case "$option" in
	--format) formats="$formats $value" ;;
	--description) description=$value ;;
	--file) files="$files
$value" ;;
	--xen-cmdline) xen_cmdline=$value ;;
	--dom0-cmdline) dom0_cmdline=$value ;;
	--dom0-memory) dom0_memory=$value ;;
	--dtb) dtb=$value ;;
	--size) size=$value ;;
	--arch) arch=$value ;;
	*) printf 'post-image.sh (hlimage): skipping argument %s (not one of this script'"'"'s)\n' "$option" >&2 ;;
	esac
done
[ -n "$formats" ] || formats=disk

if [ -z "$arch" ] && [ -n "${BR2_CONFIG:-}" ] && [ -f "${BR2_CONFIG:-}" ]; then
	if grep -q '^BR2_x86_64=y' "$BR2_CONFIG"; then
		arch=x86_64
	elif grep -q '^BR2_aarch64=y' "$BR2_CONFIG"; then
		arch=arm64
	fi
fi
if [ -z "$arch" ]; then
	if [ -f "$binaries/bzImage" ]; then
		arch=x86_64
	elif [ -f "$binaries/Image" ] || [ -f "$binaries/Image.gz" ]; then
		arch=arm64
	else
		die "no bzImage or Image in $binaries to tell the architecture from; pass --arch"
	fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hlimage-post-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

case "$arch" in
x86_64)
	kernel_name=vmlinuz
	kernel=$binaries/bzImage
	[ -n "$xen_cmdline" ] || xen_cmdline="console=com1,vga com1=115200,8n1 loglvl=all guest_loglvl=all"
	;;
arm64)
	kernel_name=Image
	kernel=$binaries/Image
	[ -f "$kernel" ] || kernel=$binaries/Image.gz
	[ -n "$xen_cmdline" ] || xen_cmdline="console=dtuart loglvl=all guest_loglvl=all"
	;;
*) die "--arch $arch: use x86_64 or arm64" ;;
esac
[ -f "$kernel" ] || die "no kernel: $kernel does not exist (BR2_LINUX_KERNEL)"
ln -s "$kernel" "$work/$kernel_name"

if [ -f "$binaries/xen.efi" ]; then
	ln -s "$binaries/xen.efi" "$work/xen.efi"
fi
multiboot=""
for name in xen.gz xen; do
	if [ -f "$binaries/$name" ]; then
		multiboot=$name
		ln -s "$binaries/$name" "$work/$name"
		break
	fi
done
[ -e "$work/xen.efi" ] || [ -n "$multiboot" ] || die "no xen.efi, xen.gz or xen in $binaries"

initrd=""
for name in rootfs.cpio.gz rootfs.cpio.xz rootfs.cpio.zst rootfs.cpio.lz4 rootfs.cpio.bz2 \
	rootfs.cpio.lzma rootfs.cpio.lzo rootfs.cpio; do
	if [ -f "$binaries/$name" ]; then
		initrd=initrd.img
		ln -s "$binaries/$name" "$work/initrd.img"
		break
	fi
done

if [ -z "$dtb" ] && [ "$arch" = arm64 ]; then
	set -- "$binaries"/*.dtb
	if [ $# -eq 1 ] && [ -f "$1" ]; then
		dtb=$1
	fi
fi
if [ -n "$dtb" ]; then
	case "$dtb" in
	/*) ;;
	*) [ -f "$dtb" ] || dtb=$binaries/$dtb ;;
	esac
	[ -f "$dtb" ] || die "--dtb $dtb: no such file"
	ln -s "$(cd "$(dirname "$dtb")" && pwd)/$(basename "$dtb")" "$work/board.dtb"
fi

# Newline-separated, so that a path with spaces stays one file.
old_ifs=$IFS
IFS='
'
for file in $files; do
	[ -f "$file" ] || die "--file $file: no such file"
	ln -sf "$(cd "$(dirname "$file")" && pwd)/$(basename "$file")" "$work/$(basename "$file")"
done
IFS=$old_ifs

if [ -n "$description" ]; then
	[ -f "$description" ] || die "--description $description: no such file"
	cp "$description" "$work/hlimage.toml"
else
	{
		printf '[image]\narch = "%s"\n\n[xen]\n' "$arch"
		if [ -e "$work/xen.efi" ]; then
			printf 'efi = "xen.efi"\n'
		fi
		if [ -n "$multiboot" ]; then
			printf 'multiboot = "%s"\n' "$multiboot"
		fi
		if [ -e "$work/board.dtb" ]; then
			printf 'dtb = "board.dtb"\n'
		fi
		printf 'cmdline = "%s"\n\n' "$(toml_string "$xen_cmdline")"
		printf '[[domain]]\nname = "dom0"\nkernel = "%s"\n' "$kernel_name"
		if [ -n "$initrd" ]; then
			printf 'initrd = "%s"\n' "$initrd"
		fi
		if [ -n "$dom0_cmdline" ]; then
			printf 'cmdline = "%s"\n' "$(toml_string "$dom0_cmdline")"
		fi
		if [ -n "$dom0_memory" ]; then
			printf 'memory = "%s"\n' "$(toml_string "$dom0_memory")"
		fi
	} >"$work/hlimage.toml"
fi

hlimage=${HLIMAGE:-}
if [ -z "$hlimage" ]; then
	if [ -n "${HOST_DIR:-}" ] && [ -x "$HOST_DIR/bin/hlimage" ]; then
		hlimage=$HOST_DIR/bin/hlimage
	else
		hlimage=hlimage
	fi
fi

for format in $formats; do
	case "$format" in
	unified) output=xen-unified.efi ;;
	esp) output=xen-esp ;;
	disk) output=xen-disk.img ;;
	grub) output=xen-grub ;;
	grub-standalone) output=xen-grub.efi ;;
	pxe) output=xen-pxe ;;
	*) die "--format $format: use unified, esp, disk, grub, grub-standalone or pxe" ;;
	esac
	if [ "$format" = disk ] && [ -n "$size" ]; then
		"$hlimage" build "$work/hlimage.toml" --format "$format" -o "$binaries/$output" --size "$size"
	else
		"$hlimage" build "$work/hlimage.toml" --format "$format" -o "$binaries/$output"
	fi
done
