SUMMARY = "A Xen host booted from one unified xen.efi built by hlimage"
DESCRIPTION = "meta-virtualization's dom0 image, run from its initramfs, with Xen and the \
kernel in a unified xen.efi, and a USB disk image of it."
LICENSE = "MIT"

# meta-virtualization's dom0 image (DISTRO_FEATURES xen and systemd); this layer and
# meta-virtualization both in BBLAYERS, hlimage on the host (HOSTTOOLS += "hlimage") or from a
# native recipe named in HLIMAGE_NATIVE.
require recipes-extended/images/xen-image-minimal.bb

inherit hlimage

IMAGE_FSTYPES += "hlimage"

# Deployed as xen-hlimage-example-${MACHINE}.rootfs.xen-unified.efi (boot it from an ESP or
# with `hlimage run`) and .xen-disk.img (dd it to a USB stick), each with .manifest.json.
HLIMAGE_FORMATS = "unified disk"

# The image is dom0's initramfs: run its init from there instead of looking for a root disk.
HLIMAGE_DOM0_CMDLINE = "console=hvc0 earlyprintk=xen rdinit=/sbin/init"
HLIMAGE_DOM0_MEMORY = "1G"
# Xen's command line (empty: a serial console for the architecture and full logging).
HLIMAGE_XEN_CMDLINE = ""

# Or describe the system yourself, from a template (`hlimage init x86-classic files/`), with
# the staged file names (xen.efi, xen.gz, vmlinuz or Image, initrd.img, board.dtb):
# HLIMAGE_DESCRIPTION = "${THISDIR}/files/hlimage.toml"
# HLIMAGE_EXTRA_FILES = "${DEPLOY_DIR_IMAGE}/guest1-${MACHINE}.cpio.gz"
