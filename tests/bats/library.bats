#!/usr/bin/env bats
# The library's small fork-free helpers, which the teardown path relies on.

load test_helper

lib() {
  bash -c "source '$KIT/scripts/lib/dask-pbs.sh'; $1"
}

@test "dpk::elapsed subtracts two stamps to the hundredth, across a carry" {
  run lib 'dpk::elapsed a 100.95 103.05; dpk::elapsed b 5.000001 5.009; dpk::elapsed c 7.5 7.5; dpk::elapsed d 1795969356.5086157 1795969357.9; echo "$a $b $c $d"'
  [ "$status" -eq 0 ]
  [ "$output" = "2.10 0.00 0.00 1.40" ]
}

@test "dpk::now gives seconds with a fraction, with or without bash's EPOCHREALTIME" {
  run lib 'dpk::now t; echo "$t"; unset EPOCHREALTIME; dpk::now u; echo "$u"'
  [ "$status" -eq 0 ]
  [[ ${lines[0]} =~ ^[0-9]{10}\.[0-9]+$ ]]
  [[ ${lines[1]} =~ ^[0-9]{10}\.[0-9]+$ ]]
}

@test "dpk::read_file keeps the whole file, newlines included; a missing file reads as empty" {
  printf '{"a": 1}\n\nlast\n' >"$BATS_TEST_TMPDIR/f"
  run lib "dpk::read_file x '$BATS_TEST_TMPDIR/f'; printf '%s|' \"\$x\"; dpk::read_file y '$BATS_TEST_TMPDIR/none'; printf '[%s]' \"\$y\""
  [ "$status" -eq 0 ]
  [ "$output" = $'{"a": 1}\n\nlast\n|[]' ]
}

@test "dpk::nap sleeps without a sleep process, and a trapped signal cuts it short" {
  run lib 'SECONDS=0; dpk::nap 0.3; echo "slept $SECONDS"'
  [ "$status" -eq 0 ]
  [[ $output == "slept 0" || $output == "slept 1" ]]
  bash -c "source '$KIT/scripts/lib/dask-pbs.sh'; dpk::nap 2" &
  local napper=$!
  sleep 1
  run pgrep -P "$napper" -x sleep
  wait "$napper"
  [ "$status" -eq 1 ]  # no child called sleep
  SECONDS=0
  run lib 'trap "echo trapped; exit 3" TERM; (sleep 0.5; kill -TERM $$) & dpk::nap 30; echo "not cut short"'
  [ "$status" -eq 3 ]
  [ "$output" = trapped ]
  [ "$SECONDS" -lt 10 ]
}
