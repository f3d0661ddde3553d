# Shared by the scripts in this folder. Source it; it defines paths and small helpers.
set -euo pipefail
SM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SM_CACHE="${SM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/supermachine}"
SM_BUILD="${SM_BUILD:-$SM_ROOT/build}"
export SM_ROOT SM_CACHE SM_BUILD
sm_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
sm_die() { printf 'error: %s\n' "$*" >&2; exit 1; }
