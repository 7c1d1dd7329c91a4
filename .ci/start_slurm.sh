#!/usr/bin/env bash
# Start a throwaway single-node Slurm (Debian's slurm-wlm and munge, as root) for the cluster tests and
# print its state folder; `.ci/stop_slurm.sh FOLDER` stops what this started. A Slurm already answering
# on this machine is left alone (nothing printed). Comes up in about a minute after the install.
set -euo pipefail
if command -v sinfo >/dev/null && sinfo -h -o %t 2>/dev/null | grep -q idle; then exit 0; fi
state=$(mktemp -d /tmp/distillbench-slurm.XXXXXX)
mkdir -p "$state"/{spool,state,log}
if ! command -v slurmctld >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if [ ! -f /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged --force && touch "$state/munged.started"
fi
host=$(hostname -s)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
# scancel's SIGTERM is ignored by submitit's jobs: a cancelled job dies at the SIGKILL KillWait seconds
# later (default 30), long enough for a test's tiny cell to finish first
KillWait=1
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$(( $(free -m | awk '/Mem:/{print $2}') * 8 / 10 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -q idle; then echo "$state"; exit 0; fi
  sleep 1
done
echo "slurm did not come up; see $state/log" >&2
exit 1
