#!/usr/bin/env bats
# The library's phases one at a time, with stub tasks instead of Dask: the knob checks, the
# plan, liveness, holding, and each stage of the teardown (SIGTERM, a grace period, SIGKILL).

load test_helper

# Run bash code with the library sourced, as a template runs it (set -euo pipefail).
lib() {
  bash -c "set -euo pipefail; source '$KIT/scripts/lib/dask-pbs.sh'; $1"
}

# A stub Dask process: python3 that writes its PID to $1, then behaves as $2 says:
# obeys (exits at once on SIGTERM), ignores (SIGTERM does nothing), closes (on SIGTERM,
# writes the file $3 as the scheduler's plugin does, then exits), signalled (closes, and
# first logs to $1.log what distributed logs on a signal).
stub() {
  "$PY" - "$@" <<'PY' &
import os, signal, sys, time
pid_file, kind = sys.argv[1], sys.argv[2]
def closing(*_):
    if kind == "signalled":
        open(pid_file + ".log", "a").write("INFO - Received signal SIGTERM (15)\n")
    open(sys.argv[3], "w").write("closed\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, {"obeys": signal.SIG_DFL, "ignores": signal.SIG_IGN,
                               "closes": closing, "signalled": closing}[kind])
with open(pid_file + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()}\n")
os.replace(pid_file + ".tmp", pid_file)
time.sleep(60)
PY
}

# The library's view of a started cluster, for stubs on this node and one "remote" node
# reached through a pbsdsh stand-in that runs the command here. Used inside lib '...'.
TASKS='
  DPK_MODE=interactive PBS_JOBID=1.test STOP_TIMEOUT=${STOP_TIMEOUT:-2}
  DPK_P_SCHED_NODE=node00 DPK_F_CLOSED=$BATS_TEST_TMPDIR/closed DPK_F_NAP=""
  DPK_T_PID=() DPK_T_LINE=() DPK_T_NODE=() DPK_T_PIDFILE=() DPK_T_LOG=()
  add_task() { # node pidfile: a task whose pbsdsh lives as long as its Dask process
    DPK_T_PID+=("$(cat "$2")") DPK_T_NODE+=("$1") DPK_T_LINE+=(1) DPK_T_PIDFILE+=("$2")
    DPK_T_LOG+=("$2.log")
  }
'

setup() {
  export FAKEPBS_HOME=$BATS_TEST_TMPDIR/pbs
  mkdir -p "$BATS_TEST_TMPDIR/bin"
  # pbsdsh -n LINE -- PROGRAM ARGS: run it here (every stub node is this machine).
  printf '#!/bin/bash\nwhile [[ $1 != -- ]]; do shift; done\nshift\nexec "$@"\n' >"$BATS_TEST_TMPDIR/bin/pbsdsh"
  chmod +x "$BATS_TEST_TMPDIR/bin/pbsdsh"
  export PATH=$BATS_TEST_TMPDIR/bin:$KIT/.venv/bin:/usr/local/bin:/usr/bin:/bin
  cd "$BATS_TEST_TMPDIR" || return 1
}

# A zombie: zombie PIDFILE STATUS writes to PIDFILE the PID of a child that exited with
# STATUS, whose parent (ZOMBIE_PARENT, for the test to kill) sleeps 30 s without reaping it.
zombie() {
  "$PY" - "$2" >"$1" <<'PY' &
import os, sys, time
pid = os.fork()
if pid == 0:
    os._exit(int(sys.argv[1]))
print(pid, flush=True)
time.sleep(30)
PY
  ZOMBIE_PARENT=$!
}

# Wait until each of these pid files exists.
await_pid_files() {
  local f _
  for f in "$@"; do
    for _ in $(seq 100); do [[ -s $f ]] && break; sleep 0.05; done
    [[ -s $f ]]
  done
}

# ------------------------------------------------------------------ knobs

@test "check_knobs gives every knob its default" {
  run lib 'DPK_MODE=interactive PBS_JOBID=7.srv PBS_O_WORKDIR=/w; dpk::check_knobs
    echo "$INTERFACE|$NWORKERS|$NTHREADS|$MEMORY_RESERVE|$WORKER_ON_SCHEDULER_CHUNK|$READY_TIMEOUT|$WALLTIME|$WALLTIME_MARGIN|$STOP_TIMEOUT|$TLS|$DASHBOARD|$SCHEDULER_FILE|$LOG_DIR"'
  [ "$status" -eq 0 ]
  [ "$output" = "auto|1|0|10%|auto|120||60|8|yes|network|/w/scheduler.json|/w/dask-logs/7.srv" ]
}

@test "check_knobs refuses each bad value with the knob's name, before anything starts" {
  local knob
  for knob in NWORKERS=0 NWORKERS=two NTHREADS=-1 READY_TIMEOUT=1.5 STOP_TIMEOUT= \
    WALLTIME_MARGIN=x WALLTIME=1h WALLTIME=1:2:3:4 WORKER_ON_SCHEDULER_CHUNK=maybe TLS=maybe \
    DASHBOARD=public "INTERFACE=ib0;rm"; do
    [[ $knob == STOP_TIMEOUT= ]] && continue  # empty means the default
    run lib "DPK_MODE=interactive PBS_JOBID=7.srv PBS_O_WORKDIR=/w; export ${knob@Q}; dpk::check_knobs; echo started"
    echo "$knob: $output"
    [ "$status" -eq 1 ]
    [[ $output == "dask-pbs: ${knob%%=*}="* ]]
    [[ $output != *started* ]]
  done
}

@test "check_knobs: a blank PROGRAM, no pbsdsh, no qsub job: one line each, status 1" {
  run lib 'DPK_MODE=production PBS_JOBID=7.srv PBS_O_WORKDIR=/w PROGRAM=" "; dpk::check_knobs'
  [ "$status" -eq 1 ]
  [ "$output" = "dask-pbs: PROGRAM is empty: set the command to run in the template or with qsub -v PROGRAM=..." ]
  run lib 'DPK_MODE=interactive PBS_JOBID=7.srv PBS_O_WORKDIR=/w PATH=/usr/bin:/bin; dpk::check_knobs'
  [ "$status" -eq 1 ]
  [[ $output == "dask-pbs: no pbsdsh on PATH "* ]]
  run lib 'DPK_MODE=interactive; unset PBS_JOBID; dpk::check_knobs'
  [ "$status" -eq 1 ]
  [ "$output" = "dask-pbs: PBS_JOBID or PBS_O_WORKDIR is not set: submit this script with qsub" ]
}

# ------------------------------------------------------------------ plan

@test "parse_plan reads the helper's lines into the phase's arrays" {
  run lib 'dpk::parse_plan <<EOF
job	qstat -f -F json
walltime	3600	3540	pbs
scheduler	0	0	node00	1
worker	1	1	node01	2	2	1932735283	2	100000	0
worker	2	3	node02	2	2	auto	2	0	2147483648
EOF
    echo "$DPK_P_JOB_SOURCE|$DPK_P_WALLTIME_LEFT|$DPK_P_WALLTIME_SOURCE|$DPK_P_SCHED_NODE|$DPK_P_SCHED_LINE|$DPK_P_EXPECTED"
    echo "${DPK_P_W_CHUNK[*]}|${DPK_P_W_LINE[*]}|${DPK_P_W_NODE[*]}|${DPK_P_W_MEMORY[*]}|${DPK_P_W_PPM[*]}|${DPK_P_W_BYTES[*]}"'
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "qstat -f -F json|3540|pbs|node00|0|4" ]
  [ "${lines[1]}" = "1 2|1 3|node01 node02|1932735283 auto|100000 0|0 2147483648" ]
}

# ------------------------------------------------------------------ time and liveness

@test "now_us and seconds: microseconds since the epoch, printed to the hundredth" {
  run lib 'dpk::now_us a; unset EPOCHREALTIME; dpk::now_us b; echo "$a $b"; dpk::seconds 2105000; echo; dpk::seconds 999; echo; dpk::seconds 61990000'
  [ "$status" -eq 0 ]
  [[ ${lines[0]} =~ ^[0-9]{16}\ [0-9]{16}$ ]]
  [ "${lines[1]}" = "2.10" ]
  [ "${lines[2]}" = "0.00" ]
  [ "${lines[3]}" = "61.99" ]
}

@test "alive: a running process is alive; an exited one and a zombie are not" {
  zombie zombie.pid 0
  await_pid_files zombie.pid
  sleep 0.2
  grep -q '^State:.*Z' "/proc/$(cat zombie.pid)/status"
  run lib "dpk::alive $$ && echo running; dpk::alive $(cat zombie.pid) || echo zombie-gone; dpk::alive 999999999 || echo none; dpk::alive '' || echo empty"
  kill "$ZOMBIE_PARENT"
  [ "$output" = $'running\nzombie-gone\nnone\nempty' ]
}

@test "nap sleeps its time with no sleep process, and a trapped signal cuts it short" {
  mkfifo nap.fifo
  run lib 'DPK_F_NAP=nap.fifo; dpk::now_us a; dpk::nap 0.3; dpk::now_us b; echo $(((b - a) / 1000))'
  [ "$status" -eq 0 ]
  [ "$output" -ge 290 ]
  [ "$output" -lt 1500 ]
  bash -c "source '$KIT/scripts/lib/dask-pbs.sh'; DPK_F_NAP=nap.fifo; dpk::nap 2" &
  local napper=$!
  sleep 1
  run pgrep -P "$napper"
  wait "$napper"
  [ "$status" -eq 1 ]  # no child at all
  SECONDS=0
  run lib 'DPK_F_NAP=nap.fifo; trap "echo trapped; exit 3" TERM; (sleep 0.5; kill -TERM $$) & dpk::nap 30; echo "not cut short"'
  [ "$status" -eq 3 ]
  [ "$output" = trapped ]
  [ "$SECONDS" -lt 10 ]
}

# ------------------------------------------------------------------ holding

@test "hold: less walltime left than the margin stops at once, saying so" {
  run lib 'PBS_JOBID=1.t DPK_P_WALLTIME_LEFT=30 DPK_P_WALLTIME_SOURCE=pbs WALLTIME_MARGIN=60
    dpk::hold; echo "status $?"'
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "dask-pbs: only 30 s of walltime left, not more than WALLTIME_MARGIN=60 s: stopping the cluster now (ask for more walltime, or lower WALLTIME_MARGIN)" ]
  [ "${lines[1]}" = "status 0" ]
  [[ $output != *"-30"* ]]
}

@test "hold: a scheduler that closes ends the hold with 0; one that dies, with 1" {
  stub "$BATS_TEST_TMPDIR/s.pid" closes "$BATS_TEST_TMPDIR/closed"
  await_pid_files s.pid
  run lib "$TASKS"'add_task node00 s.pid; DPK_P_WALLTIME_LEFT=-1 DPK_P_SCHED_CHUNK=0 LOG_DIR=.
    (sleep 0.5; kill -TERM "$(cat s.pid)") & dpk::hold; echo "status $?"'
  [ "$status" -eq 0 ]
  [[ ${lines[0]} == "dask-pbs: holding the cluster until qdel 1.test or the walltime (unknown: set WALLTIME"* ]]
  [ "${lines[1]}" = "dask-pbs: the scheduler has been shut down (by a client): ending the job" ]
  [ "${lines[2]}" = "status 0" ]
  rm -f closed s.pid
  stub "$BATS_TEST_TMPDIR/s.pid" obeys
  await_pid_files s.pid
  run lib "$TASKS"'add_task node00 s.pid; DPK_P_WALLTIME_LEFT=-1 DPK_P_SCHED_CHUNK=0 LOG_DIR=.
    (sleep 0.5; kill -KILL "$(cat s.pid)") & dpk::hold || echo "status $?"'
  [[ $output == *"dask-pbs: warning: the scheduler died"* ]]
  [ "${lines[-1]}" = "status 1" ]
}

# Hold a fresh scheduler stub that logs a SIGTERM and writes file $1 as it goes, signalled
# 0.5 s in with no signal for the holding script: its output in $lines, as `run` leaves it.
hold_signalled_scheduler() {
  rm -f closed s.pid s.pid.log
  stub "$BATS_TEST_TMPDIR/s.pid" signalled "$1"
  await_pid_files s.pid
  run lib "$TASKS"'add_task node00 s.pid; DPK_P_WALLTIME_LEFT=-1 DPK_P_SCHED_CHUNK=0 LOG_DIR=.
    (sleep 0.5; kill -TERM "$(cat s.pid)") & dpk::hold; echo "status $?"'
}

@test "on_signal: a trap slower than the nap had left still runs to its end" {
  # bash leaves read -t's timer armed while a trap runs inside it; a $(...) in the trap that
  # ends after the read's deadline used to drop the trap (status 142 from the read, the
  # script going on as if no signal had come). Here the trap's message takes 0.5 s (a slow
  # fork on a busy node) and the SIGTERM comes 0.7 s into a 1 s nap.
  mkfifo nap
  run lib 'DPK_MODE=interactive DPK_F_NAP=$PWD/nap
    dpk::log() { local slow; slow=$(sleep 0.5; printf x); printf "dask-pbs: %s\n" "$*"; }
    trap "dpk::on_signal TERM" TERM
    (sleep 0.7; kill -TERM $$) & dpk::nap 1; dpk::nap 1; echo "trap lost"'
  [ "$status" -eq 0 ]
  [ "$output" = "dask-pbs: received SIGTERM: shutting the cluster down" ]
}

@test "hold: a qdel that reaches the scheduler first is still a qdel: no 'shut down by a client', no 'died'" {
  # qdel signals every process of the job at once; on a busy node the scheduler may close
  # (its log says it got the signal) before the job script's trap has run: here the hold
  # sees it gone at its look after 1 s, and the job script's SIGTERM comes 0.3 s later.
  stub "$BATS_TEST_TMPDIR/s.pid" signalled "$BATS_TEST_TMPDIR/closed"
  await_pid_files s.pid
  run lib "$TASKS"'add_task node00 s.pid; DPK_P_WALLTIME_LEFT=-1 DPK_P_SCHED_CHUNK=0 LOG_DIR=.
    trap "dpk::on_signal TERM" TERM
    (sleep 0.2; kill -TERM "$(cat s.pid)"; sleep 1.3; kill -TERM $$) & dpk::hold; echo "status $?"'
  [ "$status" -eq 0 ]
  [ "${lines[1]}" = "dask-pbs: received SIGTERM: shutting the cluster down" ]
  [[ $output != *"by a client"* && $output != *"died"* && $output != *"status"* ]]
  # Without a qdel to follow, the same scheduler's end is told after that second.
  hold_signalled_scheduler "$BATS_TEST_TMPDIR/closed"
  [ "${lines[1]}" = "dask-pbs: the scheduler has been shut down (by a client): ending the job" ]
  [ "${lines[2]}" = "status 0" ]
  # Signalled, gone without closing, and no signal for this script: the job's end, not a death.
  hold_signalled_scheduler "$BATS_TEST_TMPDIR/not-the-closed-file"
  [ "${lines[1]}" = "dask-pbs: the scheduler was stopped by a signal (its log says so: qdel, the walltime or a kill) and did not close: ending the job" ]
  [ "${lines[2]}" = "status 0" ]
  [[ $output != *"died"* ]]
}

# ------------------------------------------------------------------ teardown

@test "teardown: a scheduler that closes on SIGTERM takes no grace period and no warning" {
  stub "$BATS_TEST_TMPDIR/s.pid" closes "$BATS_TEST_TMPDIR/closed"
  stub "$BATS_TEST_TMPDIR/w.pid" obeys
  await_pid_files s.pid w.pid
  run lib "$TASKS"'add_task node00 s.pid; add_task node01 w.pid; SCHEDULER_FILE=sched.json
    dpk::now_us a; dpk::stop_scheduler $((a + 2000000)); dpk::now_us b
    echo "took $(((b - a) / 1000)) ms"'
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output != *warning* ]]
  [[ ${lines[0]} =~ ^took\ ([0-9]+)\ ms$ ]]
  [ "${BASH_REMATCH[1]}" -lt 1000 ]
  [ -e closed ]
}

@test "teardown: a scheduler that ignores SIGTERM gets SIGKILL after the grace period" {
  stub "$BATS_TEST_TMPDIR/s.pid" ignores
  await_pid_files s.pid
  run lib "$TASKS"'add_task node00 s.pid; SCHEDULER_FILE=sched.json
    dpk::now_us a; dpk::stop_scheduler $((a + 1500000)); dpk::now_us b
    echo "took $(((b - a) / 1000)) ms"'
  echo "$output"
  [[ ${lines[0]} == "dask-pbs: warning: the scheduler did not close within STOP_TIMEOUT=2 s of its SIGTERM: killing it" ]]
  [[ ${lines[1]} =~ ^took\ ([0-9]+)\ ms$ ]]
  [ "${BASH_REMATCH[1]}" -ge 1450 ]
  [ "${BASH_REMATCH[1]}" -lt 3000 ]
  sleep 0.2
  ! kill -0 "$(cat s.pid)" 2>/dev/null
}

@test "teardown: tasks here and on other nodes get SIGTERM; one that ignores it, SIGKILL after a real grace period" {
  stub "$BATS_TEST_TMPDIR/here.pid" obeys
  stub "$BATS_TEST_TMPDIR/there.pid" obeys
  stub "$BATS_TEST_TMPDIR/stubborn.pid" ignores
  await_pid_files here.pid there.pid stubborn.pid
  run lib "$TASKS"'add_task node00 here.pid; add_task node01 there.pid; add_task node02 stubborn.pid
    dpk::now_us a; dpk::stop_tasks $((a + 1500000)); dpk::now_us b
    echo "took $(((b - a) / 1000)) ms"'
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$(grep -c warning <<<"$output")" -eq 1 ]
  [[ $output == *"warning: the Dask process on node node02 did not stop within STOP_TIMEOUT=2 s of its SIGTERM: killing it (see stubborn.pid.log)"* ]]
  [[ ${lines[-1]} =~ ^took\ ([0-9]+)\ ms$ ]]
  [ "${BASH_REMATCH[1]}" -ge 1450 ]
  [ "${BASH_REMATCH[1]}" -lt 3500 ]
  sleep 0.2
  local f
  for f in here there stubborn; do
    ! kill -0 "$(cat "$f.pid")" 2>/dev/null
  done
}

@test "teardown: tasks that exit at once and a task whose pbsdsh is a zombie: no wait, no warning" {
  stub "$BATS_TEST_TMPDIR/w1.pid" obeys
  stub "$BATS_TEST_TMPDIR/w2.pid" obeys
  zombie zombie.pid 1
  await_pid_files w1.pid w2.pid zombie.pid
  run lib "$TASKS"'add_task node01 w1.pid; add_task node02 w2.pid; add_task node03 zombie.pid
    dpk::now_us a; dpk::stop_tasks $((a + 8000000)); dpk::now_us b
    echo "took $(((b - a) / 1000)) ms"'
  kill "$ZOMBIE_PARENT"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output != *warning* ]]
  [[ ${lines[-1]} =~ ^took\ ([0-9]+)\ ms$ ]]
  [ "${BASH_REMATCH[1]}" -lt 1000 ]
}

@test "teardown: a program that ignores SIGTERM is killed at half of STOP_TIMEOUT" {
  stub "$BATS_TEST_TMPDIR/p.pid" ignores
  await_pid_files p.pid
  run lib 'STOP_TIMEOUT=2 DPK_F_NAP="" DPK_PROGRAM_PID=$(cat p.pid)
    dpk::now_us a; dpk::stop_program $((a + 1000000)); dpk::now_us b
    echo "took $(((b - a) / 1000)) ms"'
  echo "$output"
  [ "${lines[0]}" = "dask-pbs: warning: the program did not stop within STOP_TIMEOUT/2 after SIGTERM: killing it" ]
  [[ ${lines[1]} =~ ^took\ ([0-9]+)\ ms$ ]]
  [ "${BASH_REMATCH[1]}" -ge 950 ]
  [ "${BASH_REMATCH[1]}" -lt 2500 ]
}

@test "remove_if_ours leaves a scheduler file another job has replaced" {
  printf mine >s.json
  run lib 'PBS_JOBID=1.t; dpk::remove_if_ours s.json mine; [[ ! -e s.json ]] && echo removed'
  [ "$output" = removed ]
  printf theirs >s.json
  run lib 'PBS_JOBID=1.t; dpk::remove_if_ours s.json mine; cat s.json'
  [ "$output" = theirs ]
}

@test "read_file keeps the whole file, newlines included; a missing file reads as empty" {
  printf '{"a": 1}\n\nlast\n' >f
  run lib 'dpk::read_file x f; printf "%s|" "$x"; dpk::read_file y none; printf "[%s]" "$y"'
  [ "$status" -eq 0 ]
  [ "$output" = $'{"a": 1}\n\nlast\n|[]' ]
}

@test "teardown: a task still starting (no PID recorded yet) is stopped through its pbsdsh, at once, no warning" {
  stub "$BATS_TEST_TMPDIR/pbsdsh.pid" obeys  # plays the task's pbsdsh, which passes SIGTERM on
  await_pid_files pbsdsh.pid
  run lib "$TASKS"'DPK_T_PID+=("$(cat pbsdsh.pid)") DPK_T_NODE+=(node01) DPK_T_LINE+=(1)
    DPK_T_PIDFILE+=(not-yet.pid) DPK_T_LOG+=(w.log)
    dpk::now_us a; dpk::stop_tasks $((a + 2000000)); dpk::now_us b
    echo "took $(((b - a) / 1000)) ms"'
  echo "$output"
  [[ $output != *warning* ]]
  [[ ${lines[-1]} =~ ^took\ ([0-9]+)\ ms$ ]]
  [ "${BASH_REMATCH[1]}" -lt 1000 ]
  ! kill -0 "$(cat pbsdsh.pid)" 2>/dev/null
}
