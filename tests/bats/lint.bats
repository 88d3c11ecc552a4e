#!/usr/bin/env bats
# Static checks on the shell code users copy.

load test_helper

@test "the library, the task wrapper, the templates and the fake are ShellCheck clean" {
  run "$KIT/.venv/bin/shellcheck" -S warning -x "$KIT"/scripts/*.pbs "$KIT"/scripts/lib/*.sh \
    "$KIT"/tests/fakepbs/bin/* "$KIT"/.ci/run
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "sourcing the library starts nothing and defines the entry point" {
  run bash -c "source '$KIT/scripts/lib/dask-pbs.sh' && declare -F dpk::main && jobs -p | wc -l"
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "dpk::main" ]
  [ "${lines[1]}" = "0" ]
}
