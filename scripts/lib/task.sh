#!/bin/bash
# dask-pbs-kit: what each pbsdsh task runs (started as /bin/bash task.sh ..., never sourced).
#
# PBS starts a task with a stripped environment (PATH=/bin:/usr/bin), cwd $HOME and no
# shell. This script puts the job script's environment back (env.sh leaves alone what PBS
# and the site's hooks set on this host: TMPDIR, CUDA_VISIBLE_DEVICES, ...), checks the
# node, picks the interface and the memory limit this host allows, and execs the Dask
# process: PBS kills a task's session when its top process exits.
#
# Usage: task.sh NAME=VALUE... -- [DASK ARGS...]
#   role=scheduler|worker  env=ENV_FILE  log=LOG  pid=PID_FILE  node=NODE  kit=KIT_DIR
#   python=PYTHON  interface=auto|NAME|(empty: Dask's default)  iface=FILE (auto's choice)
#   first=FIRST_NODE  scheduler_file=FILE  timeout=SECONDS  tls=DIR (empty: plain tcp)
#   omp=OMP_THREADS   workers only: memory=BYTES|auto host_procs=P reserve_ppm=N reserve_bytes=N
# Exit status: 2 usage; 3 no usable interface; 4 environment or certificates unreadable;
# 7 too little memory; 127 no dask command.
set -uo pipefail

role="" env="" log=/dev/null pid="" node="?" kit="" python=python3 interface="" iface=""
first="" scheduler_file="" timeout=120 tls="" omp=1 memory=auto host_procs=1 reserve_ppm=0
reserve_bytes=0
while [[ $# -gt 0 && $1 != -- ]]; do
  case ${1%%=*} in
    role | env | log | pid | node | kit | python | interface | iface | first | scheduler_file | \
      timeout | tls | omp | memory | host_procs | reserve_ppm | reserve_bytes)
      printf -v "${1%%=*}" '%s' "${1#*=}"
      ;;
    *)
      printf 'dask-pbs: task.sh: unknown setting %s\n' "$1" >&2
      exit 2
      ;;
  esac
  shift
done
shift # --

fail() { # <status> <message>: to the job's stderr and to the task's log
  printf 'dask-pbs: %s\n' "$2" | tee -a "$log" >&2
  exit "$1"
}

# env.sh exports what the job script set; what PBS gave this task itself stays (TMPDIR is
# this node's own: PBS makes it on each host).
# shellcheck source=/dev/null
source "$env" 2>/dev/null ||
  fail 4 "cannot read the job environment $env on node $node (is the submit folder on a file system shared with the compute nodes?)"
export TMPDIR=${TMPDIR:-/tmp}
command -v dask >/dev/null ||
  fail 127 "no 'dask' command on node $node with the job's PATH ($PATH): install dask and distributed in the environment the template activates"

# The interface: a name must exist here; auto asks the helper, which writes its choice.
how=""
case $interface in
  "") ;;
  auto)
    choice_args=(--first-node "$first")
    # The scheduler writes the file it would wait for: only workers may wait for it.
    [[ $role == worker ]] && choice_args+=(--scheduler-file "$scheduler_file" --wait "$timeout")
    choice=$("$python" "$kit/helpers/kit.py" interface "${choice_args[@]}" 2>&1) ||
      fail 3 "node $node: ${choice#dask-pbs: }"
    read -r interface address how_chosen <<<"$choice"
    printf '%s %s %s %s\n' "$node" "$interface" "$address" "$how_chosen" >"$iface"
    how=", interface $interface $address ($how_chosen, INTERFACE=auto)"
    ;;
  *)
    if [[ ! -e /sys/class/net/$interface ]]; then
      available=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')
      fail 3 "interface '$interface' does not exist on node $node (it has: ${available% }); set INTERFACE to one of them, INTERFACE=auto, or INTERFACE= for Dask's default"
    fi
    ;;
esac
[[ -n $interface ]] && set -- --interface "$interface" "$@"

# A worker's memory limit: its share of the chunk, never more than this host grants.
if [[ $role == worker ]]; then
  limit=$("$python" "$kit/helpers/kit.py" host-memory --memory "$memory" --host-procs "$host_procs" \
    --reserve-ppm "$reserve_ppm" --reserve-bytes "$reserve_bytes" 2>&1) ||
    fail 7 "node $node: ${limit#dask-pbs: }"
  how+=", memory limit ${limit%%$'\t'*} bytes per process (${limit#*$'\t'})"
  set -- --memory-limit "${limit%%$'\t'*}" "$@"
fi

if [[ -n $tls ]]; then
  [[ -r $tls/ca.pem && -r $tls/cluster.key ]] ||
    fail 4 "cannot read the job's TLS certificates in $tls on node $node (is the submit folder shared with the compute nodes?)"
  # Through Dask's configuration, not --tls-* options: `dask scheduler` refuses
  # --tls-* together with --interface ("Can not specify both interface and host").
  export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
  export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$tls/ca.pem
  export DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT=$tls/cluster.pem
  export DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY=$tls/cluster.key
  export DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT=$tls/cluster.pem
  export DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY=$tls/cluster.key
  set -- --protocol tls "$@"
fi

cd "${PBS_O_WORKDIR:-$HOME}" || fail 4 "cannot enter the submit folder $PBS_O_WORKDIR on node $node"
echo "$$" >"$pid"
exec >>"$log" 2>&1
echo "dask-pbs: $role on node $node (pid $$, TMPDIR $TMPDIR$how) at $(date '+%F %T')"
case $role in
  scheduler)
    exec dask scheduler "$@"
    ;;
  worker)
    export OMP_NUM_THREADS=$omp
    # The nanny resets these in each worker process; keep the user's thread count.
    export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{'MALLOC_TRIM_THRESHOLD_': 65536, 'OMP_NUM_THREADS': $omp, 'MKL_NUM_THREADS': $omp, 'OPENBLAS_NUM_THREADS': $omp}"
    exec dask worker --local-directory "$TMPDIR" "$@"
    ;;
  *)
    fail 2 "task.sh: unknown role '$role'"
    ;;
esac
