#!/usr/bin/env bash
# Stop the Slurm that .ci/start_slurm.sh started (its state folder as the argument) and remove its state.
state=${1:?state folder}
scancel --user="$(id -un)" 2>/dev/null
for daemon in slurmd slurmctld; do
  [ -f "$state/$daemon.pid" ] && kill "$(cat "$state/$daemon.pid")" 2>/dev/null
done
[ -f "$state/munged.started" ] && pkill -x munged
rm -rf "$state"
exit 0
