# hlimage.bbclass: Xen boot media built by hlimage from the Xen and kernel this build
# deployed and this image's own initramfs, as an image type.
#
#   inherit hlimage
#   IMAGE_FSTYPES += "hlimage"
#   HLIMAGE_FORMATS = "unified disk"
#
# do_image_hlimage writes, for each format in HLIMAGE_FORMATS, one output into IMGDEPLOYDIR
# (deployed with the image, so it lands in DEPLOY_DIR_IMAGE) with its manifest beside it:
#
#   unified          ${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.xen-unified.efi   one PE file
#   esp              ....xen-esp/                                        an ESP tree
#   disk             ....xen-disk.img                                    a GPT disk image
#   grub             ....xen-grub/                                       grub.cfg and files
#   grub-standalone  ....xen-grub.efi                                    one GRUB binary
#   pxe              ....xen-pxe/                                        a TFTP root
#
# each also as ${IMAGE_LINK_NAME}.xen-... symlinks, and OUTPUT.manifest.json (sha256 of every
# payload and of what firmware measures; no times, no absolute paths).
#
# The inputs are staged under the plain names hlimage's templates use (`hlimage init`), so a
# description written from one of them works as HLIMAGE_DESCRIPTION unchanged:
#
#   xen.efi     HLIMAGE_XEN_EFI        (meta-virtualization deploys xen-${MACHINE}.efi)
#   xen.gz      HLIMAGE_XEN_MULTIBOOT  (xen-${MACHINE}.gz; the grub formats on x86)
#   vmlinuz     HLIMAGE_KERNEL         on x86_64 (bzImage)
#   Image       HLIMAGE_KERNEL         on arm64
#   initrd.img  HLIMAGE_INITRD         (this image as cpio.gz: IMAGE_TYPEDEP:hlimage)
#   board.dtb   HLIMAGE_DTB            (arm64: the host device tree)
#   and every file of HLIMAGE_EXTRA_FILES under its own name (domU kernels, a FLASK policy)
#
# Without HLIMAGE_DESCRIPTION the description is written from the variables below: a classic
# dom0 booting this image. The hlimage command comes from the host (HOSTTOOLS += "hlimage")
# or from a native recipe of your layer named in HLIMAGE_NATIVE. SOURCE_DATE_EPOCH is exported
# to it: the disk image's FAT timestamps come from it, so the same inputs give the same bytes.

HLIMAGE_FORMATS ?= "unified"
# Xen's command line; empty: a serial console and full logging for the architecture.
HLIMAGE_XEN_CMDLINE ?= ""
HLIMAGE_DOM0_CMDLINE ?= "console=hvc0"
# dom0's memory, like 1G (dom0_mem=); empty: Xen's default.
HLIMAGE_DOM0_MEMORY ?= ""
# A description file of your own instead of the generated one (paths: the staged names).
HLIMAGE_DESCRIPTION ?= ""
# x86_64 or arm64; empty: from TARGET_ARCH.
HLIMAGE_ARCH ?= ""
HLIMAGE_XEN_EFI ?= "${DEPLOY_DIR_IMAGE}/xen-${MACHINE}.efi"
HLIMAGE_XEN_MULTIBOOT ?= "${DEPLOY_DIR_IMAGE}/xen-${MACHINE}.gz"
HLIMAGE_KERNEL ?= "${DEPLOY_DIR_IMAGE}/${KERNEL_IMAGETYPE}"
HLIMAGE_INITRD ?= "${IMGDEPLOYDIR}/${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.cpio.gz"
HLIMAGE_DTB ?= ""
HLIMAGE_EXTRA_FILES ?= ""
# --format disk: the image's size, like 2G; empty: the files plus headroom.
HLIMAGE_DISK_SIZE ?= ""
# More `hlimage build` options for every format, like "--key db.key --cert db.crt".
HLIMAGE_BUILD_ARGS ?= ""
HLIMAGE ?= "hlimage"
HLIMAGE_NATIVE ?= ""
HLIMAGE_WORKDIR ?= "${WORKDIR}/hlimage"
HLIMAGE_SOURCE_DATE_EPOCH ?= "${SOURCE_DATE_EPOCH}"

IMAGE_TYPES:append = " hlimage"
IMAGE_TYPEDEP:hlimage ?= "cpio.gz"
do_image_hlimage[depends] += "xen:do_deploy virtual/kernel:do_deploy"
do_image_hlimage[depends] += "${@'${HLIMAGE_NATIVE}:do_populate_sysroot' if d.getVar('HLIMAGE_NATIVE') else ''}"

# POSIX sh, as bitbake runs it. ${UPPER_CASE} is bitbake's (expanded before the shell sees
# it); $lower_case is the shell's.
IMAGE_CMD:hlimage () {
	export SOURCE_DATE_EPOCH="${HLIMAGE_SOURCE_DATE_EPOCH}"
	work="${HLIMAGE_WORKDIR}"
	rm -rf "$work"
	mkdir -p "$work"

	arch="${HLIMAGE_ARCH}"
	if [ -z "$arch" ]; then
		case "${TARGET_ARCH}" in
		x86_64) arch=x86_64 ;;
		aarch64) arch=arm64 ;;
		*) bbfatal "hlimage: TARGET_ARCH ${TARGET_ARCH}: hlimage builds for x86_64 and aarch64 only" ;;
		esac
	fi
	case "$arch" in
	x86_64)
		kernel_name=vmlinuz
		default_xen_cmdline="console=com1,vga com1=115200,8n1 loglvl=all guest_loglvl=all"
		;;
	arm64)
		kernel_name=Image
		default_xen_cmdline="console=dtuart loglvl=all guest_loglvl=all"
		;;
	*) bbfatal "hlimage: HLIMAGE_ARCH $arch: use x86_64 or arm64" ;;
	esac

	if [ ! -f "${HLIMAGE_KERNEL}" ]; then
		bbfatal "hlimage: HLIMAGE_KERNEL ${HLIMAGE_KERNEL} does not exist; deploy the kernel or set HLIMAGE_KERNEL"
	fi
	ln -s "${HLIMAGE_KERNEL}" "$work/$kernel_name"
	if [ -f "${HLIMAGE_XEN_EFI}" ]; then
		ln -s "${HLIMAGE_XEN_EFI}" "$work/xen.efi"
	fi
	if [ -f "${HLIMAGE_XEN_MULTIBOOT}" ]; then
		ln -s "${HLIMAGE_XEN_MULTIBOOT}" "$work/xen.gz"
	fi
	if [ ! -e "$work/xen.efi" ] && [ ! -e "$work/xen.gz" ]; then
		bbfatal "hlimage: neither HLIMAGE_XEN_EFI ${HLIMAGE_XEN_EFI} nor HLIMAGE_XEN_MULTIBOOT ${HLIMAGE_XEN_MULTIBOOT} exists; build xen (meta-virtualization) or set them"
	fi
	if [ -n "${HLIMAGE_INITRD}" ]; then
		if [ ! -f "${HLIMAGE_INITRD}" ]; then
			bbfatal "hlimage: HLIMAGE_INITRD ${HLIMAGE_INITRD} does not exist; add cpio.gz to IMAGE_FSTYPES or set HLIMAGE_INITRD (empty: none)"
		fi
		ln -s "${HLIMAGE_INITRD}" "$work/initrd.img"
	fi
	if [ -n "${HLIMAGE_DTB}" ]; then
		ln -s "${HLIMAGE_DTB}" "$work/board.dtb"
	fi
	for file in ${HLIMAGE_EXTRA_FILES}; do
		ln -sf "$file" "$work/$(basename "$file")"
	done

	description="$work/hlimage.toml"
	if [ -n "${HLIMAGE_DESCRIPTION}" ]; then
		cp "${HLIMAGE_DESCRIPTION}" "$description"
	else
		# TOML basic strings: a backslash or a double quote is escaped with a backslash.
		xen_cmdline=$(printf '%s' "${HLIMAGE_XEN_CMDLINE}" | sed 's/[\\"]/\\&/g')
		if [ -z "$xen_cmdline" ]; then
			xen_cmdline="$default_xen_cmdline"
		fi
		dom0_cmdline=$(printf '%s' "${HLIMAGE_DOM0_CMDLINE}" | sed 's/[\\"]/\\&/g')
		dom0_memory=$(printf '%s' "${HLIMAGE_DOM0_MEMORY}" | sed 's/[\\"]/\\&/g')
		{
			printf '[image]\narch = "%s"\n\n[xen]\n' "$arch"
			if [ -e "$work/xen.efi" ]; then
				printf 'efi = "xen.efi"\n'
			fi
			if [ -e "$work/xen.gz" ]; then
				printf 'multiboot = "xen.gz"\n'
			fi
			if [ -e "$work/board.dtb" ]; then
				printf 'dtb = "board.dtb"\n'
			fi
			printf 'cmdline = "%s"\n\n' "$xen_cmdline"
			printf '[[domain]]\nname = "dom0"\nkernel = "%s"\n' "$kernel_name"
			if [ -e "$work/initrd.img" ]; then
				printf 'initrd = "initrd.img"\n'
			fi
			if [ -n "$dom0_cmdline" ]; then
				printf 'cmdline = "%s"\n' "$dom0_cmdline"
			fi
			if [ -n "$dom0_memory" ]; then
				printf 'memory = "%s"\n' "$dom0_memory"
			fi
		} > "$description"
	fi

	for format in ${HLIMAGE_FORMATS}; do
		size_args=""
		case "$format" in
		unified) suffix=xen-unified.efi ;;
		esp) suffix=xen-esp ;;
		disk)
			suffix=xen-disk.img
			if [ -n "${HLIMAGE_DISK_SIZE}" ]; then
				size_args="--size ${HLIMAGE_DISK_SIZE}"
			fi
			;;
		grub) suffix=xen-grub ;;
		grub-standalone) suffix=xen-grub.efi ;;
		pxe) suffix=xen-pxe ;;
		*) bbfatal "hlimage: HLIMAGE_FORMATS: unknown format $format; use unified, esp, disk, grub, grub-standalone or pxe" ;;
		esac
		output="${IMGDEPLOYDIR}/${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.$suffix"
		${HLIMAGE} build "$description" --format "$format" -o "$output" $size_args ${HLIMAGE_BUILD_ARGS}
		if [ -n "${IMAGE_LINK_NAME}" ]; then
			ln -sfn "$(basename "$output")" "${IMGDEPLOYDIR}/${IMAGE_LINK_NAME}.$suffix"
			ln -sfn "$(basename "$output").manifest.json" "${IMGDEPLOYDIR}/${IMAGE_LINK_NAME}.$suffix.manifest.json"
		fi
	done
}
