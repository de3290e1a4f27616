#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (for tests and for trying the sbatch scripts):
# installs Debian's slurmctld, slurmd and munge when missing (as root), writes a slurm.conf with
# this host as the only node, starts munged, slurmctld and slurmd, and waits until the node is idle.
# Idempotent: a cluster that already answers `srun -n 2 true` is left as it is.
#   bash examples/slurm/local_cluster.sh        # then: srun -n 2 hostname
set -euo pipefail

ready() { timeout 30 srun -N1 -n 2 --time=1 true >/dev/null 2>&1; }

if command -v srun >/dev/null && ready; then
    echo "slurm: already running ($(sinfo -h -o '%N %T' | head -1))"
    exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "slurm: slurmctld/slurmd/munge are not installed and this is not root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
NODE=$(slurmd -C | head -1 | sed -E 's/ RealMemory=([0-9]+)/ RealMemory=\1/')
MEM=$(echo "$NODE" | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
NODE=$(echo "$NODE" | sed -E "s/RealMemory=[0-9]+/RealMemory=$((MEM * 9 / 10))/")
cat >"$CONF_DIR/slurm.conf" <<CONF
# written by motif-megatron examples/slurm/local_cluster.sh: a one-node test cluster
ClusterName=motif-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=30
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF

if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged 2>/dev/null || munged --force
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c -i
slurmd -c
for _ in $(seq 60); do
    if ready; then
        echo "slurm: one-node cluster up ($(sinfo -h -o '%N %c CPUs %T' | head -1))"
        exit 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm: the cluster did not become ready; see /var/log/slurm/" >&2
exit 1
