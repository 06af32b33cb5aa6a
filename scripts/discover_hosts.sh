#!/bin/sh
# Host discovery for elastic Horovod (horovodrun --host-discovery-script scripts/discover_hosts.sh).
#
# Horovod runs this script every few seconds. It must print the hosts that may run workers now,
# one per line, as HOSTNAME:SLOTS (SLOTS = workers on that host). A host that disappears from
# the list is removed from the run; one that appears is added (up to --max-np).
#
# - RECSYS_HOSTS_FILE set: print that file (keep it up to date with your machines, e.g.
#   "node-1:4" and "node-2:4" on two lines).
# - otherwise, this machine under two names, localhost and 127.0.0.1, with RECSYS_SLOTS_PER_HOST
#   workers each (default 1). Horovod drops a whole host when one of its workers fails, so two
#   names for one machine let an elastic run on one machine survive losing a worker.
set -eu
if [ -n "${RECSYS_HOSTS_FILE:-}" ]; then
  exec cat "$RECSYS_HOSTS_FILE"
fi
slots=${RECSYS_SLOTS_PER_HOST:-1}
printf 'localhost:%s\n127.0.0.1:%s\n' "$slots" "$slots"
