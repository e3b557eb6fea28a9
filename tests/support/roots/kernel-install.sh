# Bookworm's systemd kernel-install with contrib/kernel-install/90-hlimage.install, on an ESP
# that bootctl set up (tests/e2e/test_kernel_install_boot.py). Inputs: xen.efi, vmlinuz,
# dom0.cpio.gz and kernel-install.toml (the plugin's template, paths under /inputs).
export DEBIAN_FRONTEND=noninteractive
version=6.12.0-hlimage
apt-get update -q
apt-get install -y -q --no-install-recommends systemd systemd-boot systemd-boot-efi python3-venv kmod
python3 -m venv /opt/hlimage
/opt/hlimage/bin/pip install -q .
ln -s /opt/hlimage/bin/hlimage /usr/local/bin/hlimage

echo 0123456789abcdef0123456789abcdef >/etc/machine-id
# The ESP: a file system of its own, as on a real machine, so that entries name paths from its
# root (stat -c %m, which kernel-install's plugins use, does not see a bind mount on the same
# file system).
mkdir -p /efi
mount -t tmpfs -o size=512M esp /efi
trap 'umount /efi' EXIT  # fresh-root leaves a root with a mount of its own in place
# bootctl checks that the ESP is a FAT partition of the ESP type; this one is a directory.
SYSTEMD_RELAX_ESP_CHECKS=1 bootctl install --esp-path=/efi --no-variables
install -m 755 contrib/kernel-install/90-hlimage.install /etc/kernel/install.d/90-hlimage.install
mkdir -p /etc/hlimage
cp /inputs/kernel-install.toml /etc/hlimage/kernel-install.toml
# What the administrator sets: boot Xen's entry at once.
echo "console=ttyS0" >/etc/kernel/cmdline  # else 90-loaderentry copies this machine's own
printf 'timeout 0\ndefault *-xen.conf\n' >/efi/loader/loader.conf

kernel-install --verbose add "$version" /inputs/vmlinuz /inputs/dom0.cpio.gz
SYSTEMD_RELAX_ESP_CHECKS=1 bootctl --esp-path=/efi --no-pager list >/results/bootctl-list.txt 2>&1 || echo "bootctl list: exit status $?" >>/results/bootctl-list.txt
cp -a /efi /results/efi
(cd /efi && find . | sort) >/results/after-add.txt

kernel-install --verbose remove "$version"
(cd /efi && find . | sort) >/results/after-remove.txt
