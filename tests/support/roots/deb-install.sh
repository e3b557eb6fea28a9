# The .deb that deb-build.sh made, installed alone (with what it depends on and recommends,
# from Debian 12) in a clean root, builds what every template declares
# (tests/e2e/test_debian_package.py). Inputs: the .deb, plan.txt (lines "TEMPLATE FORMAT
# OUTPUT"; FORMAT lcm for `hlimage lcm`) and templates/TEMPLATE/ with the files each names.
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q /inputs/hlimage_*_all.deb
dpkg -L hlimage | sort >/results/files.txt
dpkg-query -W -f '${Package} ${Version}\n' 'python3-*' >/results/python3-packages.txt
# Not the checkout's copy (the working directory): the installed one.
cd /
command -v hlimage >/results/which.txt
hlimage --version >/results/version.txt
test -x /etc/grub.d/25_hyperlaunch
test -x /usr/lib/kernel/install.d/90-hlimage.install
mkdir -p /work /results/outputs
while read -r template format output; do
    directory=/work/$template
    if [ ! -e "$directory/hlimage.toml" ]; then
        cp -a "/inputs/templates/$template" "$directory"
        hlimage init "$template" "$directory"
    fi
    if [ "$format" = lcm ]; then
        hlimage lcm "$directory/hlimage.toml" -o "/work/$template-$output"
    else
        hlimage build "$directory/hlimage.toml" --format "$format" -o "/work/$template-$output"
    fi
    echo "$template $format" >>/results/built.txt
done </inputs/plan.txt
cp /work/x86-classic-out.efi /results/outputs/x86-classic-out.efi
# hlimage itself never needs root: the same as a user.
useradd --create-home builder
su builder -c "hlimage init x86-classic /home/builder/system" >/results/as-user.txt 2>&1
