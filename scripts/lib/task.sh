#!/bin/bash
# dask-pbs-kit: what each pbsdsh task runs (started as /bin/bash task.sh ..., never sourced).
#
# PBS starts a task with a stripped environment (PATH=/bin:/usr/bin), cwd $HOME and no
# shell. This script puts the job script's environment back (env.sh leaves alone what PBS
# and the site's hooks set on this host: TMPDIR, CUDA_VISIBLE_DEVICES, ...), checks the
# node, and execs the Dask process (PBS kills a task's session when its top process
# exits) in the Python of the job's `dask` command, through helpers/dask_pbs_kit/dask_start.py:
# there, in one Python start, the interface (INTERFACE=auto) and the memory limit this host
# allows are chosen and a worker's forkserver starts at once (see that file). Where that
# Python cannot be told from the `dask` script's first lines, one helper call
# (kit.py task-setup) chooses them and `dask` runs as a command.
#
# Usage: task.sh NAME=VALUE... -- [DASK ARGS...]
#   role=scheduler|worker  env=ENV_FILE  log=LOG  pid=PID_FILE  node=NODE  kit=KIT_DIR
#   python=PYTHON  interface=auto|NAME|(empty: Dask's default)  iface=FILE (auto's choice)
#   first=FIRST_NODE  scheduler_file=FILE  timeout=SECONDS  tls=DIR (empty: plain tcp)
#   omp=OMP_THREADS   workers only: memory=BYTES|auto host_procs=P reserve_ppm=N reserve_bytes=N
#   workers=N|plan:FILE (optional: the job's worker processes, or the plan that tells them;
#   from 200 on, Dask's connect timeout and the scheduler's listen backlog follow the job's
#   size, see dask_start.size_for)  tls_pending=yes (the scheduler, started while job-setup
#   makes the certificates: they are waited for, at most timeout, once Dask is imported)
#   plan=PLAN_FILE chunk=C line=L (a worker started before the plan, on line L of the node
#   file, guessed to be chunk C's: once Dask is imported it takes the plan's worker row of
#   chunk C at line L, its memory settings and --nthreads/--name/--nworkers; it ends, status
#   0, when the plan has none: the job starts that chunk's tasks itself)
#   GPU workers only: gpu=I gpus=N (its entry of this host's N devices) chunk_gpus=G
#   worker_command=auto|dask-worker|dask-cuda-worker cuda_args="ARGS" (for dask cuda worker)
# Exit status: 2 usage; 3 no usable interface; 4 environment, certificates or plan unreadable;
# 7 too little memory; 20 no GPU for a GPU worker; 127 no dask command.
set -uo pipefail
started=${EPOCHREALTIME:-}  # bash 5: the task's line says how long its start took

role="" env="" log=/dev/null pid="" node="?" kit="" python=python3 interface="" iface=""
first="" scheduler_file="" timeout=120 tls="" omp=1 memory=auto host_procs=1 reserve_ppm=0
reserve_bytes=0 workers="" gpu="" gpus="" chunk_gpus="" worker_command=auto cuda_args=""
tls_pending="" plan="" chunk="" line=""
while [[ $# -gt 0 && $1 != -- ]]; do
  case ${1%%=*} in
    role | env | log | pid | node | kit | python | interface | iface | first | scheduler_file | \
      timeout | tls | omp | memory | host_procs | reserve_ppm | reserve_bytes | workers | gpu | \
      gpus | chunk_gpus | worker_command | cuda_args | tls_pending | plan | chunk | line)
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
[[ $role == scheduler || $role == worker ]] || {
  printf "dask-pbs: task.sh: unknown role '%s'\n" "$role" >&2
  exit 2
}

fail() { # <status> <message>: to the job's stderr and to the task's log
  printf 'dask-pbs: %s\n' "$2" | tee -a "$log" >&2
  exit "$1"
}

fail_tls() {
  fail 4 "cannot read the job's TLS certificates in $tls on node $node (is the submit folder shared with the compute nodes?)"
}

# The Python that runs the `dask` script $1, from its first lines (no fork): #!/path/python,
# #!/usr/bin/env python3, or pip's /bin/sh trampoline for a path too long for #!. Sets
# dask_python (empty when it cannot be told: a wrapper of some other kind).
find_dask_python() {
  local line1="" line2="" word rest
  dask_python=""
  { IFS= read -r line1 && IFS= read -r line2; } 2>/dev/null <"$1"
  line1=${line1%$'\r'} line2=${line2%$'\r'}
  case $line1 in
    '#!/bin/sh')
      [[ $line2 == "'''exec' "* ]] || return 0
      rest=${line2#"'''exec' "}
      if [[ $rest == \"* ]]; then
        rest=${rest#\"} dask_python=${rest%%\"*}
      else
        dask_python=${rest%% *}
      fi
      ;;
    '#!'*)
      read -r word rest <<<"${line1#\#!}"
      if [[ ${word##*/} == env ]]; then
        read -r word _ <<<"$rest"
        hash "$word" 2>/dev/null && dask_python=${BASH_CMDS[$word]:-}
      else
        dask_python=$word
      fi
      ;;
  esac
  [[ ${dask_python##*/} == python* && -x $dask_python ]] || dask_python=""
}

# env.sh exports what the job script set; what PBS gave this task itself stays (TMPDIR is
# this node's own: PBS makes it on each host).
# shellcheck source=/dev/null
source "$env" 2>/dev/null ||
  fail 4 "cannot read the job environment $env on node $node (is the submit folder on a file system shared with the compute nodes?)"
export TMPDIR=${TMPDIR:-/tmp}
hash dask 2>/dev/null ||
  fail 127 "no 'dask' command on node $node with the job's PATH ($PATH): install dask and distributed in the environment the template activates"
dask_script=${BASH_CMDS[dask]}

# An interface given by name must exist here (auto is chosen further down).
case $interface in
  "" | auto) ;;
  *)
    if [[ ! -e /sys/class/net/$interface ]]; then
      available=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')
      fail 3 "interface '$interface' does not exist on node $node (it has: ${available% }); set INTERFACE to one of them, INTERFACE=auto, or INTERFACE= for Dask's default"
    fi
    set -- --interface "$interface" "$@"
    ;;
esac

if [[ -n $tls ]]; then
  # tls_pending=yes: the scheduler, started while job-setup makes the certificates; its
  # Python waits for them once Dask is imported (await_certificates below, or dask_start's).
  [[ $tls_pending == yes || (-r $tls/ca.pem && -r $tls/cluster.key) ]] || fail_tls
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

if [[ $role == worker ]]; then
  # What the nanny sets before it spawns each worker process (its pre-spawn environment):
  # set here, before the Python starts, they also hold in a forkserver's forks (and,
  # harmlessly, in the nanny). The user's thread count is kept.
  export OMP_NUM_THREADS=$omp MKL_NUM_THREADS=$omp OPENBLAS_NUM_THREADS=$omp MALLOC_TRIM_THRESHOLD_=65536
  export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{'MALLOC_TRIM_THRESHOLD_': 65536, 'OMP_NUM_THREADS': $omp, 'MKL_NUM_THREADS': $omp, 'OPENBLAS_NUM_THREADS': $omp}"
  set -- --local-directory "$TMPDIR" "$@"
fi

# A GPU worker sees only its own device: entry gpu of this host's list (what PBS's cgroup
# hook gave this task, read from its start: env.sh may carry the first node's; else
# nvidia-smi -L), and runs `dask cuda worker` when WORKER_COMMAND says so, or (auto) when
# dask-cuda is installed.
dask_command=("$role")
if [[ -n $gpu ]]; then
  chosen=$("$python" "$kit/helpers/kit.py" gpu --index "$gpu" --gpus "$gpus" --chunk-gpus "$chunk_gpus" \
    --node "$node" --initial-from "$$" --worker-command "$worker_command" 2>&1) ||
    fail "$?" "${chosen#dask-pbs: }"
  IFS=$'\t' read -r device command gpu_how <<<"$chosen"
  export CUDA_VISIBLE_DEVICES=$device
  # An index means the device nvidia-smi numbers so (PCI bus order), not CUDA's own order.
  [[ $device =~ ^[0-9]+$ ]] && export CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-PCI_BUS_ID}
  if [[ $command == dask-cuda-worker ]]; then
    read -r -a extra <<<"$cuda_args"
    dask_command=(cuda worker)  # dask-cuda's command, run as a command (not in dask's Python)
    set -- "$@" "${extra[@]}"
  fi
  printf 'dask-pbs: GPU worker on node %s: CUDA_VISIBLE_DEVICES=%s (%s), %s\n' "$node" "$device" \
    "$gpu_how" "$command" >>"$log"
fi

cd "${PBS_O_WORKDIR:-$HOME}" || fail 4 "cannot enter the submit folder $PBS_O_WORKDIR on node $node"
echo "$$" >"$pid"

dask_python=""
[[ ${#dask_command[@]} -gt 1 ]] || find_dask_python "$dask_script"
if [[ -n $dask_python ]]; then
  # shellcheck disable=SC2016 # Python code, not shell
  exec "$dask_python" -c 'import sys; sys.path.insert(0, sys.argv[1]); from dask_pbs_kit.dask_start import main; main()' \
    "$kit/helpers" role="$role" node="$node" log="$log" iface="$iface" interface="$interface" \
    first="$first" scheduler_file="$scheduler_file" timeout="$timeout" memory="$memory" \
    host_procs="$host_procs" reserve_ppm="$reserve_ppm" reserve_bytes="$reserve_bytes" \
    started="$started" script="$dask_script" workers="$workers" tls="$tls" tls_pending="$tls_pending" \
    plan="$plan" chunk="$chunk" line="$line" -- "$@"
fi

# The other path (dask's Python unknown): the certificates come before the Dask command.
await_certificates() {
  local waited=0
  until [[ -e $tls/client-config.json ]] || [[ $((waited++)) -ge $((timeout * 100)) ]]; do
    sleep 0.01
  done
  # client-config.json is written last, once every certificate is (kit.py tls).
  [[ -e $tls/client-config.json && -r $tls/ca.pem && -r $tls/cluster.pem && -r $tls/cluster.key ]] ||
    fail_tls
}
[[ -z $tls || $tls_pending != yes ]] || await_certificates

# The other path: one helper call for the interface (auto) and a worker's memory limit.
how=""
if [[ $interface == auto || $role == worker ]]; then
  plan_row=()
  [[ -z $plan ]] || plan_row=(plan="$plan" chunk="$chunk" line="$line")
  facts=$("$python" "$kit/helpers/kit.py" task-setup role="$role" node="$node" interface="$interface" \
    first="$first" scheduler_file="$scheduler_file" timeout="$timeout" memory="$memory" \
    host_procs="$host_procs" reserve_ppm="$reserve_ppm" reserve_bytes="$reserve_bytes" \
    "${plan_row[@]}" 2>&1) || {
    status=$?
    [[ $status -eq 11 ]] && fail 3 "node $node: ${facts#dask-pbs: }"
    [[ $status -eq 3 ]] && fail 4 "node $node: ${facts#dask-pbs: }"
    fail 7 "node $node: ${facts#dask-pbs: }"
  }
  while IFS= read -r fact; do
    case $fact in
      "no-worker "*)
        echo "${fact#no-worker }" >>"$log"
        exit 0
        ;;
      "args "*)
        read -r -a row <<<"${fact#args }"
        set -- "${row[@]}" "$@"
        ;;
      "interface "*)
        read -r _ interface address how_chosen <<<"$fact"
        printf '%s %s %s %s\n' "$node" "$interface" "$address" "$how_chosen" >"$iface"
        how+=", interface $interface $address ($how_chosen, INTERFACE=auto)"
        set -- --interface "$interface" "$@"
        ;;
      "memory "*)
        limit=${fact#memory }
        how+=", memory limit ${limit%%$'\t'*} bytes per process (${limit#*$'\t'})"
        set -- --memory-limit "${limit%%$'\t'*}" "$@"
        ;;
    esac
  done <<<"$facts"
fi

exec >>"$log" 2>&1
# When (to the millisecond, as Dask's own lines) and how long after this script began:
# the start's first phase in the bench's breakdown. No fork: printf's clock.
now=${EPOCHREALTIME:-}
took=""
if [[ -n $started && -n $now ]]; then
  now=${now/,/.} started=${started/,/.}  # the job's locale may write 1,5
  us=$((10#${now%.*} * 1000000 + 10#${now#*.} - 10#${started%.*} * 1000000 - 10#${started#*.}))
  printf -v took ' (%d.%03d s after task.sh began)' "$((us / 1000000))" "$((us % 1000000 / 1000))"
  printf -v now '%(%F %T)T.%s' "${now%.*}" "${now#*.}"
  now=${now:0:23}
else
  printf -v now '%(%F %T)T' -1
fi
echo "dask-pbs: $role on node $node (pid $$, TMPDIR $TMPDIR$how) at $now$took"
exec dask "${dask_command[@]}" "$@"
