#!/usr/bin/env bash
# Vendor MathJax 3 from the npm registry into book/_vendor/mathjax/ (gitignored), so that the built
# site typesets its maths without loading anything from outside: Jupyter Book 1 takes MathJax from a
# CDN by default, and offline the formulas would then show as raw TeX.
#
# _config.yml lists book/_vendor in html_extra_path (its contents are copied to the root of the site,
# so this folder becomes _build/html/mathjax/) and points mathjax_path at mathjax/tex-chtml.js.
#
# Idempotent: does nothing when the pinned version is already there. Needs `npm` (or `curl` as a
# fallback) and `tar`. Usage: bash book/vendor_mathjax.sh [destination]   (default book/_vendor/mathjax)
set -euo pipefail

VERSION="3.2.2"
# sha256 of mathjax-3.2.2.tgz as served by registry.npmjs.org (npm also checks its own sha512).
SHA256="1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/_vendor/mathjax}"
stamp="$dest/.mathjax-version"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$VERSION" && -f "$dest/tex-chtml.js" ]]; then
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "vendor_mathjax: fetching mathjax@$VERSION from the npm registry into $dest"
if command -v npm >/dev/null 2>&1; then
    (cd "$tmp" && npm pack --silent "mathjax@$VERSION" >/dev/null)
elif command -v curl >/dev/null 2>&1; then
    curl -fsSL -o "$tmp/mathjax-$VERSION.tgz" "https://registry.npmjs.org/mathjax/-/mathjax-$VERSION.tgz"
else
    echo "vendor_mathjax: neither npm nor curl is installed; install Node.js (npm) and run this again" >&2
    exit 1
fi

tarball="$tmp/mathjax-$VERSION.tgz"
actual="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [[ "$actual" != "$SHA256" ]]; then
    echo "vendor_mathjax: $tarball has sha256 $actual, expected $SHA256; not using it" >&2
    exit 1
fi

# The subset the site needs (about 4 MB of the 24 MB package): the two combined components, the CHTML
# web fonts, the TeX extensions that `autoload` fetches on demand, and the menu's accessibility parts.
tar -xzf "$tarball" -C "$tmp" \
    package/LICENSE \
    package/es5/tex-chtml.js \
    package/es5/tex-mml-chtml.js \
    package/es5/output/chtml/fonts/woff-v2 \
    package/es5/input/tex/extensions \
    package/es5/a11y \
    package/es5/ui

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/package/es5" "$dest"
mv "$tmp/package/LICENSE" "$dest/LICENSE"
echo "$VERSION" > "$stamp"
echo "vendor_mathjax: MathJax $VERSION in $dest ($(du -sh "$dest" | cut -f1))"
