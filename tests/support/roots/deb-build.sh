# dpkg-buildpackage -us -uc of the checkout's debian/ in a clean Debian 12 root, then lintian
# (tests/e2e/test_debian_package.py). Results: the .deb, its contents, lintian's report.
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# build-essential: dpkg-buildpackage checks for it even for an Architecture: all package.
apt-get install -y -q --no-install-recommends build-essential dpkg-dev lintian
mkdir -p /build
cp -a /src/hlimage /build/hlimage
cd /build/hlimage
apt-get build-dep -y -q --no-install-recommends .
dpkg-buildpackage -us -uc
cd /build
cp hlimage_*_all.deb /results/
dpkg-deb --contents hlimage_*_all.deb >/results/contents.txt
dpkg-deb --field hlimage_*_all.deb >/results/control.txt
lintian --fail-on error --display-info hlimage_*.changes >/results/lintian.txt 2>&1 || {
    status=$?
    cat /results/lintian.txt
    exit "$status"
}
cat /results/lintian.txt
