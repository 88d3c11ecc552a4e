#!/bin/bash
# dask-pbs-kit: what each pbsdsh task runs (started as /bin/bash task.sh ..., never sourced).
#
# PBS starts a task with a stripped environment (PATH=/bin:/usr/bin), cwd $HOME and no
# shell, so this script puts the job script's environment back, checks the node, and
# execs the Dask process: PBS kills a task's session when its top process exits.
#
# Usage: task.sh ENV_FILE LOG_FILE PID_FILE NODE INTERFACE OMP_THREADS TLS_DIR ROLE [DASK ARGS...]
#   ROLE scheduler: exec dask scheduler ARGS
#   ROLE worker:    exec dask worker --local-directory "$TMPDIR" ARGS   (this node's TMPDIR)
#   TLS_DIR: the job's certificates (empty: plain tcp).
# Exit status 3: interface missing; 4: environment file unreadable; 127: no dask command.
set -uo pipefail

env_file=$1 log=$2 pid_file=$3 node=$4 interface=$5 omp_threads=$6 tls_dir=$7 role=$8
shift 8

fail() { # <status> <message>: to the job's stderr and to the task's log
  printf 'dask-pbs: %s\n' "$2" | tee -a "$log" >&2
  exit "$1"
}

# The per-node variables PBS gave this task win over the job script's copy.
own_tmpdir=${TMPDIR:-/tmp}
# shellcheck source=/dev/null
source "$env_file" 2>/dev/null ||
  fail 4 "cannot read the job environment $env_file on node $node (is the submit folder on a file system shared with the compute nodes?)"
export TMPDIR=$own_tmpdir

if [[ -n $interface && ! -e /sys/class/net/$interface ]]; then
  available=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')
  fail 3 "interface '$interface' does not exist on node $node (it has: ${available% }); set INTERFACE to one of them, or INTERFACE= for Dask's default"
fi
command -v dask >/dev/null ||
  fail 127 "no 'dask' command on node $node with the job's PATH ($PATH): install dask and distributed in the environment the template activates"

if [[ -n $tls_dir ]]; then
  [[ -r $tls_dir/ca.pem && -r $tls_dir/cluster.key ]] ||
    fail 4 "cannot read the job's TLS certificates in $tls_dir on node $node (is the submit folder shared with the compute nodes?)"
  # Through Dask's configuration, not --tls-* options: `dask scheduler` refuses
  # --tls-* together with --interface ("Can not specify both interface and host").
  export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
  export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$tls_dir/ca.pem
  export DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT=$tls_dir/cluster.pem
  export DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY=$tls_dir/cluster.key
  export DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT=$tls_dir/cluster.pem
  export DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY=$tls_dir/cluster.key
  set -- --protocol tls "$@"
fi

cd "${PBS_O_WORKDIR:-$HOME}" || fail 4 "cannot enter the submit folder $PBS_O_WORKDIR on node $node"
echo "$$" >"$pid_file"
exec >>"$log" 2>&1
echo "dask-pbs: $role on node $node (pid $$, TMPDIR $TMPDIR) at $(date '+%F %T')"
case $role in
  scheduler)
    exec dask scheduler "$@"
    ;;
  worker)
    export OMP_NUM_THREADS=$omp_threads
    # The nanny resets these in each worker process; keep the user's thread count.
    export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{'MALLOC_TRIM_THRESHOLD_': 65536, 'OMP_NUM_THREADS': $omp_threads, 'MKL_NUM_THREADS': $omp_threads, 'OPENBLAS_NUM_THREADS': $omp_threads}"
    exec dask worker --local-directory "$TMPDIR" "$@"
    ;;
  *)
    fail 2 "unknown role '$role'"
    ;;
esac
