#!/usr/bin/env bash
# A Slurm cluster on this machine (for tests and for trying the sbatch scripts): installs Debian's
# slurmctld, slurmd and munge when missing (as root), writes slurm.conf, starts munged, slurmctld
# and the slurmd daemons, and waits until every node runs a task.
#   bash examples/slurm/local_cluster.sh              # one node (this host): srun -n 2 hostname
#   bash examples/slurm/local_cluster.sh --nodes 2    # then: srun -N 2 -n 2 hostname
# With --nodes N > 1 each node is a slurmd in its own network namespace (motif-n1 ... motif-nN,
# 10.77.0.11 ...), with its own hostname (a UTS namespace), joined by veth pairs to the bridge
# motifbr0 (10.77.0.1, where slurmctld listens); nothing is routed beyond this machine. The nodes
# share this filesystem, as cluster nodes share theirs. Idempotent: a cluster that already runs
# the requested nodes is left as it is.
set -euo pipefail

NODES=1
while [ $# -gt 0 ]; do
    case $1 in
        --nodes) NODES=$2; shift 2 ;;
        --nodes=*) NODES=${1#*=}; shift ;;
        *) echo "usage: $0 [--nodes N]" >&2; exit 2 ;;
    esac
done
case $NODES in '' | *[!0-9]* | 0) echo "slurm: --nodes must be a positive integer" >&2; exit 2 ;; esac

BRIDGE=motifbr0
SUBNET=10.77.0
node_name() { echo "motif-n$1"; }
ready() { # every node runs a task, each under its own hostname
    local names
    names=$(timeout 30 srun -N "$NODES" -n "$NODES" --time=1 hostname 2>/dev/null | sort -u) || return 1
    [ "$(echo "$names" | wc -l)" -eq "$NODES" ] && [ "$(sinfo -h -o '%D' | awk '{s += $1} END {print s}')" -eq "$NODES" ]
}

if command -v srun >/dev/null && ready; then
    echo "slurm: already running ($(sinfo -h -o '%N %T' | head -1))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm: starting a local cluster needs root" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
for ns in $(ip netns list 2>/dev/null | awk '/^motif-n[0-9]+/ {print $1}'); do ip netns del "$ns"; done
ip link del "$BRIDGE" 2>/dev/null || true
# rewritten in place: a container's /etc/hosts is often a bind mount that cannot be replaced
HOSTS=$(grep -v '# motif-local-cluster$' /etc/hosts || true)
printf '%s\n' "$HOSTS" >/etc/hosts

HOST=$(hostname -s)
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
PROBE=$(slurmd -C | head -1)
MEM=$(echo "$PROBE" | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
SHAPE=$(echo "$PROBE" | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+.*//')
if [ "$NODES" -eq 1 ]; then
    CTLD_HOST=$HOST
    NODE_LINES="NodeName=$HOST $SHAPE RealMemory=$((MEM * 9 / 10)) State=UNKNOWN"
    NODE_LIST=$HOST
else # the bridge and one namespace per node
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    CTLD_HOST="$HOST($SUBNET.1)"
    echo "$SUBNET.1 motif-bridge # motif-local-cluster" >>/etc/hosts # a name for every peer
    NODE_LINES=""
    for i in $(seq "$NODES"); do
        name=$(node_name "$i")
        addr="$SUBNET.$((10 + i))"
        ip netns add "$name"
        ip link add "motif-v$i" type veth peer name "motif-p$i"
        ip link set "motif-p$i" netns "$name"
        ip link set "motif-v$i" master "$BRIDGE" up
        ip -n "$name" addr add "$addr/24" dev "motif-p$i"
        ip -n "$name" link set "motif-p$i" up
        ip -n "$name" link set lo up
        ip -n "$name" route add default via "$SUBNET.1" # this host's own addresses (srun)
        echo "$addr $name # motif-local-cluster" >>/etc/hosts
        NODE_LINES+="NodeName=$name NodeAddr=$addr $SHAPE RealMemory=$((MEM * 9 / 10 / NODES)) State=UNKNOWN"$'\n'
    done
    NODE_LIST="$(node_name 1)"
    for i in $(seq 2 "$NODES"); do NODE_LIST+=",$(node_name "$i")"; done
fi
cat >"$CONF_DIR/slurm.conf" <<CONF
# written by motif-megatron examples/slurm/local_cluster.sh: a $NODES-node test cluster
ClusterName=motif-local
SlurmctldHost=$CTLD_HOST
SlurmUser=root
AuthType=auth/munge
# a requeued job waits this long before it may start again (Slurm's default: 120 s)
AuthInfo=cred_expire=30
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=30
$NODE_LINES
PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF

if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged 2>/dev/null || munged --force
slurmctld -c -i
if [ "$NODES" -eq 1 ]; then
    mkdir -p "/var/spool/slurmd/$HOST"
    slurmd -c
else
    for i in $(seq "$NODES"); do
        name=$(node_name "$i")
        mkdir -p "/var/spool/slurmd/$name"
        # nsenter enters the network namespace only (ip netns exec would remount /sys, hiding the
        # cgroup tree slurmd reads); unshare gives the node its own hostname
        nsenter --net="/run/netns/$name" unshare --uts sh -c "hostname $name && exec slurmd -c -N $name"
    done
fi
for _ in $(seq 60); do
    if ready; then
        echo "slurm: $NODES-node cluster up ($(sinfo -h -o '%N %c CPUs %T' | head -1))"
        exit 0
    fi
    scontrol update nodename="$NODE_LIST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm: the cluster did not become ready; see /var/log/slurm/" >&2
exit 1
