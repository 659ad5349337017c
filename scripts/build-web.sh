#!/usr/bin/env bash
# Builds the wall's vendored browser libraries: installs web/package-lock.json (npm ci, skipped
# when the locked versions are already in web/node_modules) and copies each library's dist files
# to web/vendor/, which media-server embeds at compile time (media-server/build.rs) and serves.
# Idempotent; offline once web/node_modules holds the locked versions (a failed npm ci with an
# existing web/vendor/ is a warning, not an error, so an offline rebuild still works).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
web="$here/web"
vendor="$web/vendor"

want=$(node -e 'console.log(require(process.argv[1]).packages["node_modules/leaflet"].version)' "$web/package-lock.json")
have=$(node -e 'try{console.log(require(process.argv[1]).version)}catch(e){console.log("none")}' \
  "$web/node_modules/leaflet/package.json")
if [ "$want" != "$have" ]; then
  echo "build-web: npm ci in web (leaflet $have -> $want)" >&2
  if ! (cd "$web" && npm ci --no-audit --no-fund --silent); then
    if [ -f "$vendor/leaflet/leaflet.js" ]; then
      echo "build-web: npm ci failed (offline?); keeping the existing web/vendor" >&2
      exit 0
    fi
    echo "build-web: npm ci failed and web/vendor/leaflet is missing: the wall's map needs it" >&2
    exit 1
  fi
fi

src="$web/node_modules/leaflet/dist"
dst="$vendor/leaflet"
mkdir -p "$dst/images"
# Copy only what changed (cmp), so media-server is not rebuilt when nothing did.
copy() { cmp -s "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
copy "$src/leaflet.js" "$dst/leaflet.js"
copy "$src/leaflet.css" "$dst/leaflet.css"
for f in "$src"/images/*.png; do copy "$f" "$dst/images/$(basename "$f")"; done
copy "$web/node_modules/leaflet/LICENSE" "$dst/LICENSE"
echo "$want" > "$dst/VERSION.tmp" && { cmp -s "$dst/VERSION.tmp" "$dst/VERSION" && rm "$dst/VERSION.tmp" || mv "$dst/VERSION.tmp" "$dst/VERSION"; }
