# Debian's grub-efi-amd64 with grub/25_hyperlaunch installed as /etc/grub.d/25_hyperlaunch:
# update-grub writes grub.cfg, grub-script-check reads it (tests/e2e/test_update_grub.py).
# Inputs: xen.gz, vmlinuz, dom0.cpio.gz, xen.toml (a description naming them under
# /boot/hlimage-test, where no other grub.d script looks). With a loop device, /boot is the ext4
# second partition of a GPT disk image, /results/disk.img, whose first partition is an ESP. The
# ESP is written with mtools into the image file, not mounted (the CI machines' kernels have no
# vfat), so grub-install, which wants it mounted, cannot fill it: its BOOTX64.EFI is Debian's
# GRUB made with grub-mkstandalone, finding /grub/grub.cfg on the disk and running it, so that
# the entries' root is the /boot partition. (grub-mkconfig_lib's prepare_grub_to_access_device,
# which writes an entry's search line, gets nothing for a loop device's partition: GRUB 2.06's
# grub-probe finds "no GRUB drive" for /dev/loop0p2; the entry has no search line.) Without
# a loop device, /results/no-loop says why and /boot, a plain directory, is copied to
# /results/boot.
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends fdisk dosfstools mtools e2fsprogs python3-venv
python3 -m venv /opt/hlimage
/opt/hlimage/bin/pip install -q .
ln -s /opt/hlimage/bin/hlimage /usr/local/bin/hlimage
# The distribution's package, its maintainer scripts included; they find no installed GRUB to
# update, so the boot loader is put on the disk below.
echo "grub-efi-amd64 grub2/update_nvram boolean false" | debconf-set-selections
apt-get install -y -q --no-install-recommends grub-efi-amd64

disk=/results/disk.img
truncate -s 160M "$disk"
printf 'label: gpt\nsize=32M, type=uefi, name=ESP\ntype=linux, name=boot\n' | sfdisk "$disk"
esp_offset=$((2048 * 512))  # sfdisk's first partition starts at 1 MiB
mkfs.vfat -F 16 -n ESP --offset 2048 "$disk" $((32 * 1024))  # mtools reads no FAT32 this small
printf '%s\n' 'insmod part_gpt' 'insmod ext2' \
    'search --no-floppy --file --set=root /grub/grub.cfg' 'configfile /grub/grub.cfg' \
    >/tmp/early.cfg
grub-mkstandalone -O x86_64-efi -o /tmp/BOOTX64.EFI --locales= --fonts= --themes= \
    "boot/grub/grub.cfg=/tmp/early.cfg"
mmd -i "$disk@@$esp_offset" ::/EFI ::/EFI/BOOT
mcopy -i "$disk@@$esp_offset" /tmp/BOOTX64.EFI ::/EFI/BOOT/BOOTX64.EFI
mdir -/ -b -i "$disk@@$esp_offset" ::/ >/results/esp.txt

loop=""
cleanup() {
    umount /boot 2>/dev/null || true
    if [ -n "$loop" ]; then losetup -d "$loop"; fi
}
trap cleanup EXIT
mkdir -p /boot
# HLIMAGE_TEST_NO_LOOP=1 takes the other way, to test it where loop devices work.
if [ -n "${HLIMAGE_TEST_NO_LOOP:-}" ]; then
    echo "HLIMAGE_TEST_NO_LOOP is set" >/results/no-loop
    loop=""
    rm "$disk"
elif loop=$(losetup --find --show --partscan "$disk" 2>/results/no-loop); then
    rm /results/no-loop
    # The kernel makes the partitions' nodes in /dev a moment later.
    for _ in $(seq 50); do [ -b "${loop}p2" ] && break; partx -u "$loop" || true; sleep 0.2; done
    mkfs.ext4 -q -L boot "${loop}p2"
    mount "${loop}p2" /boot
else
    loop=""
    rm "$disk"
fi

# grub-install makes /boot/grub; update-grub writes into it.
mkdir -p /boot/grub /boot/hlimage-test /etc/hlimage
cp /inputs/xen.gz /inputs/vmlinuz /inputs/dom0.cpio.gz /boot/hlimage-test/
cp /inputs/xen.toml /etc/hlimage/xen.toml
# Boot the hlimage entry at once (its id is hlimage-NAME).
mkdir -p /etc/default/grub.d
printf 'GRUB_DEFAULT=hlimage-xen\nGRUB_TIMEOUT=0\nGRUB_TIMEOUT_STYLE=hidden\n' \
    >/etc/default/grub.d/hlimage-test.cfg
install -m 755 grub/25_hyperlaunch /etc/grub.d/25_hyperlaunch
update-grub
cp /boot/grub/grub.cfg /results/grub.cfg
grub-script-check /boot/grub/grub.cfg
# The hlimage entry alone, as 25_hyperlaunch printed it.
sed -n '/^### BEGIN \/etc\/grub.d\/25_hyperlaunch ###$/,/^### END \/etc\/grub.d\/25_hyperlaunch ###$/p' \
    /boot/grub/grub.cfg >/results/25_hyperlaunch.cfg
grub-script-check /results/25_hyperlaunch.cfg
if [ -n "$loop" ]; then
    (cd /boot && find . | sort) >/results/boot.txt
else
    cp -a /boot /results/boot
fi
