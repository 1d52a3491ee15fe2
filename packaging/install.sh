#!/usr/bin/env bash
# Install Mission Control on a gateway host with one command: a virtual environment in a
# fixed prefix, the package (from a wheel or a checkout), the mc-sidecar and mc-hub
# commands linked onto PATH, and, given --hub and --token, enrollment with the hub and
# the sidecar's service (systemd or launchd), started.
#
#   sudo packaging/install.sh --from mission_control_sidecar-0.1.0-py3-none-any.whl \
#        --hub hub.example.org:7444 --token 'JOIN-TOKEN' --gateway-user alice
#   packaging/install.sh --hub hub.example.org:7444 --token 'JOIN-TOKEN'   # as the user
#
# Running it again is safe: the environment is reused, an enrolled host is not enrolled
# again, and the service is only restarted if its files changed. --uninstall removes the
# service, the links and the environment, and leaves state and workspaces in place.
# Written for bash 3.2 too (macOS).
set -euo pipefail
umask 022

MARKER=".installed-by-mission-control"

usage() {
	cat <<'EOF'
usage: install.sh [options] [-- install-service settings...]

  --from PATH          a wheel (.whl) or a source checkout to install
                       [the checkout this script is in]
  --prefix DIR         where the virtual environment goes
                       [/opt/mission-control as root, else ~/.local/share/mission-control]
  --bin-dir DIR        where mc-sidecar and mc-hub are linked
                       [/usr/local/bin as root, else ~/.local/bin]
  --python PYTHON      Python 3.11 or newer to build the environment with [python3]
  --hub HOST:PORT      the hub's enrollment address (mc-hub --enroll-listen) ...
  --token JOIN         ... and a join token: enroll, then install and start the service
  --gateway-user USER  as root: the OS user the OpenClaw gateway runs as; the sidecar
                       runs as this user, never as root [the user who ran sudo]
  --state-dir DIR      the sidecar's state directory [~/.mc-sidecar of that user]
  --no-start           write the service but leave systemctl/launchctl alone
  --uninstall          remove the service, the links and the environment
                       (state, enrollment and workspaces stay)
  -h, --help           this text

Anything after -- goes to `mc-sidecar install-service` (e.g. --openclaw-config FILE).
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 1
}
say() { echo "==> $*"; }

need_value() {
	[ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
}

from="" prefix="" bin_dir="" python="${PYTHON:-python3}" hub="" token=""
gateway_user="" state_dir="" no_start=0 uninstall=0
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--from | --prefix | --bin-dir | --python | --hub | --token | --gateway-user | --state-dir)
		need_value "$@"
		case "$1" in
		--from) from=$2 ;;
		--prefix) prefix=$2 ;;
		--bin-dir) bin_dir=$2 ;;
		--python) python=$2 ;;
		--hub) hub=$2 ;;
		--token) token=$2 ;;
		--gateway-user) gateway_user=$2 ;;
		--state-dir) state_dir=$2 ;;
		esac
		shift 2
		;;
	--no-start) no_start=1 && shift ;;
	--uninstall) uninstall=1 && shift ;;
	-h | --help) usage && exit 0 ;;
	--) shift && extra=("$@") && break ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
done

if [ "$(id -u)" -eq 0 ]; then
	as_root=1
	prefix=${prefix:-/opt/mission-control}
	bin_dir=${bin_dir:-/usr/local/bin}
else
	as_root=0
	prefix=${prefix:-$HOME/.local/share/mission-control}
	bin_dir=${bin_dir:-$HOME/.local/bin}
fi
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac
case "$bin_dir" in /*) ;; *) bin_dir="$PWD/$bin_dir" ;; esac
venv="$prefix/venv"
commands="mc-sidecar mc-hub"

# The service commands, each as the user it concerns (uninstall-service needs no user).
scope_flag() { if [ "$as_root" -eq 1 ]; then echo --system; else echo --user; fi; }
manage_flag() {
	if [ "$no_start" -eq 1 ]; then
		if [ "$1" = install ]; then echo --no-start; else echo --no-stop; fi
	fi
}

if [ "$uninstall" -eq 1 ]; then
	if [ -x "$venv/bin/mc-sidecar" ]; then
		for command in $commands; do
			# shellcheck disable=SC2046 # the flags are single words or nothing
			"$venv/bin/$command" uninstall-service $(scope_flag) $(manage_flag uninstall)
		done
	fi
	for command in $commands; do
		link="$bin_dir/$command"
		if [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/$command" ]; then
			rm -f "$link" && say "removed $link"
		fi
	done
	if [ -d "$prefix" ]; then
		[ -e "$prefix/$MARKER" ] || die "not removing $prefix: install.sh did not make it"
		rm -rf "$prefix" && say "removed $prefix"
	fi
	say "uninstalled; the sidecar's state, enrollment and agent workspaces were left in place"
	exit 0
fi

# What to install: a wheel, or a checkout (this script's own by default).
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$from" ]; then
	[ -f "$here/../pyproject.toml" ] || die "pass --from WHEEL (no checkout around $here)"
	from=$(cd "$here/.." && pwd)
fi
case "$from" in
*.whl) [ -f "$from" ] || die "--from $from: no such wheel" ;;
*) [ -f "$from/pyproject.toml" ] || die "--from $from: neither a .whl nor a checkout" ;;
esac

if [ -n "$hub$token" ] && { [ -z "$hub" ] || [ -z "$token" ]; }; then
	die "--hub and --token go together: the hub's enrollment address and a join token"
fi
if [ -n "$gateway_user" ] && [ "$as_root" -eq 0 ] && [ "$gateway_user" != "$(id -un)" ]; then
	die "--gateway-user $gateway_user: run this as that user, or as root"
fi

command -v "$python" >/dev/null || die "$python not found; pass --python PYTHON (3.11 or newer)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
	die "$python is older than 3.11; pass --python PYTHON (3.11 or newer)"

if [ -d "$prefix" ] && [ ! -e "$prefix/$MARKER" ] && [ -n "$(ls -A "$prefix")" ]; then
	die "$prefix exists and was not made by install.sh; choose another --prefix"
fi
mkdir -p "$prefix"
touch "$prefix/$MARKER"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
	say "reusing the environment in $venv"
else
	rm -rf "$venv"
	say "creating the environment in $venv"
	"$python" -m venv "$venv"
fi
say "installing $from"
pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install --upgrade "$from"
# The same version number rebuilt (a checkout, a new wheel) is not an upgrade to pip.
pip_install --force-reinstall --no-deps "$from"

mkdir -p "$bin_dir"
for command in $commands; do
	link="$bin_dir/$command"
	if [ -e "$link" ] && [ ! -L "$link" ]; then
		die "$link exists and is not a link; move it away (or pass --bin-dir)"
	fi
	ln -sfn "$venv/bin/$command" "$link"
done
say "linked $bin_dir/mc-sidecar and $bin_dir/mc-hub ($("$venv/bin/mc-sidecar" --version))"

if [ -z "$hub" ]; then
	say "next: mc-sidecar enroll --hub HUB:7444 --token JOIN, then mc-sidecar install-service"
	say "(or run this again with --hub and --token to do both)"
	exit 0
fi

# Enroll and install the service as the gateway's user: the sidecar never runs as root.
if [ "$as_root" -eq 1 ]; then
	[ "$(uname -s)" != Darwin ] ||
		die "on macOS the sidecar is a LaunchAgent: run install.sh as the gateway's user, without sudo"
	gateway_user=${gateway_user:-${SUDO_USER:-}}
	[ -n "$gateway_user" ] || die "pass --gateway-user USER: the OS user running the OpenClaw gateway"
	[ "$(id -u "$gateway_user" 2>/dev/null)" != 0 ] ||
		die "--gateway-user $gateway_user: the sidecar never runs as root; name the gateway's user"
	gateway_home=$(getent passwd "$gateway_user" | cut -d: -f6)
	[ -n "$gateway_home" ] || die "--gateway-user $gateway_user: no such user"
	command -v runuser >/dev/null || die "runuser (util-linux) is needed to enroll as $gateway_user"
	as_gateway_user() { runuser -u "$gateway_user" -- env HOME="$gateway_home" "$@"; }
	as_gateway_user "$venv/bin/python" -c '' 2>/dev/null ||
		die "$gateway_user cannot run $venv/bin/python (it is $(readlink -f "$venv/bin/python"), \
under a directory $gateway_user cannot enter?); rebuild with --python set to a system-wide \
Python 3.11 or newer (e.g. /usr/bin/python3) and --uninstall first"
else
	gateway_user=$(id -un)
	as_gateway_user() { "$@"; }
fi

state_args=()
[ -z "$state_dir" ] || state_args=(--state-dir "$state_dir")
enrolled_check='
import sys
from missioncontrol.settings import expand_path
from sidecar.config import RUN_OPTIONS
from sidecar.link.identity import is_enrolled
default = next(o.default for o in RUN_OPTIONS if o.key == "state_dir")
sys.exit(0 if is_enrolled(expand_path(sys.argv[1] or default)) else 1)
'
if as_gateway_user "$venv/bin/python" -c "$enrolled_check" "$state_dir"; then
	say "already enrolled; not enrolling again (to replace it: mc-sidecar enroll ... --force)"
else
	say "enrolling as $gateway_user with $hub"
	as_gateway_user "$venv/bin/mc-sidecar" enroll --hub "$hub" --token "$token" \
		${state_args[@]+"${state_args[@]}"}
fi

service_args=()
[ "$as_root" -eq 0 ] || service_args=(--gateway-user "$gateway_user")
say "installing the sidecar's service"
# shellcheck disable=SC2046 # the flags are single words or nothing
"$venv/bin/mc-sidecar" install-service $(scope_flag) $(manage_flag install) \
	${service_args[@]+"${service_args[@]}"} ${state_args[@]+"${state_args[@]}"} \
	${extra[@]+"${extra[@]}"}
