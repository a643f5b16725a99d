#!/usr/bin/env bash
# Runs a command inside a private network namespace in which only loopback exists, so that no DDS
# packet of the tests, demo or benchmarks can leave through a real network card, whatever a process
# configures. Falls back to the current namespace (with a notice) where namespaces are not permitted;
# the loopback-only DDS settings (fastpillars_ros.ros.rosenv) still apply there.
set -euo pipefail
if [ "${FASTPILLARS_NETNS:-}" = 1 ]; then exec "$@"; fi
inner='ip link set lo up 2>/dev/null || true; export FASTPILLARS_NETNS=1; exec "$@"'
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  exec unshare -n -- bash -c "$inner" bash "$@"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn -- bash -c "$inner" bash "$@"
fi
echo "[netns] private network namespaces are not permitted here; running in the current one" >&2
exec "$@"
