#!/usr/bin/env bats
# Only the job's owner can use the cluster: per-job TLS, private files, the dashboard knob.

load test_helper

# Python that tries to reach the job's scheduler and run code; prints what happened.
# Argument: how to build the client (a Python expression using `address`, `Client`, `Security`).
intrude() {
  "$PY" - "$1" <<'PYEOF'
import json, sys
from distributed import Client, Security
address = json.load(open("scheduler.json"))["address"]
try:
    client = eval(sys.argv[1])
except Exception as exc:
    print("refused:", type(exc).__name__)
    sys.exit(1)
print("connected; ran:", client.submit(lambda: 6 * 7).result())
PYEOF
}

# intrude with this client, which the job's scheduler must refuse: refused CLIENT
refused() {
  run intrude "$1"
  [ "$status" -eq 1 ]
  [[ $output == "refused:"* ]]
}

# Octal modes of files: mode PATH...
mode() {
  stat -c '%a %n' "$@"
}

@test "TLS by default: the owner's client runs code, clients and workers without the job's certificates are refused" {
  submit_background launch-dask-cluster-path.pbs -l select=3:ncpus=1:mem=1gb -l walltime=00:03:00
  jobid=$(background_job_id)
  run "$PY" "$KIT/helpers/dashboard_url.py" --wait 90 scheduler.json
  [ "$status" -eq 0 ]
  tls=$BATS_TEST_TMPDIR/dask-logs/$jobid/tls
  grep -q '"address": "tls://127.0.0.1:' scheduler.json

  run with_client 'print("ran", client.submit(lambda: 6 * 7).result(), len(client.scheduler_info()["workers"]))'
  [ "$output" = "ran 42 2" ]

  # No certificate: distributed cannot even open the connection.
  refused 'Client(scheduler_file="scheduler.json", timeout=5)'
  # Plain tcp to the same port: the TLS listener drops it.
  refused 'Client(address.replace("tls://", "tcp://"), timeout=5)'
  # A certificate from another CA, trusting this job's (public) CA certificate.
  "$PY" "$KIT/helpers/kit.py" tls other --name intruder
  refused "Client(address, timeout=5, security=Security(tls_ca_file='$tls/ca.pem', tls_client_cert='other/client.pem', tls_client_key='other/client.key', require_encryption=True))"

  # A worker with a certificate from another CA never joins.
  run timeout 60 "$KIT/.venv/bin/dask" worker "$(sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' scheduler.json)" \
    --no-nanny --death-timeout 5 --tls-ca-file "$tls/ca.pem" \
    --tls-cert other/cluster.pem --tls-key other/cluster.key
  [ "$status" -ne 0 ]
  [ "$status" -ne 124 ]
  run with_client 'print("workers", len(client.scheduler_info()["workers"]))'
  [ "$output" = "workers 2" ]

  # Everything the job wrote is the owner's only; the CA key does not exist.
  run mode "dask-logs/$jobid" "$tls" "$tls"/* scheduler.json scheduler.tls.json "dask-logs/$jobid"/*.log
  echo "$output"
  [[ $output != *" $tls/ca.key"* ]]
  [ "$(echo "$output" | grep -c '^700 ')" -eq 2 ]
  [ "$(echo "$output" | grep -vc '^[67]00 ')" -eq 0 ]
  [ "$(ls "$tls")" = "$(printf 'ca.pem\nclient-config.json\nclient.key\nclient.pem\ncluster.key\ncluster.pem')" ]

  run cat "dask-logs/$jobid/cluster-info.txt"
  [[ $output == *"connect:   from dask.distributed import Client, Security; client = Client(scheduler_file=\"$BATS_TEST_TMPDIR/scheduler.json\", security=Security(tls_ca_file=\"$tls/ca.pem\", tls_client_cert=\"$tls/client.pem\", tls_client_key=\"$tls/client.key\", require_encryption=True))"* ]]

  qdel "$jobid"
  wait "$JOB_QSUB_PID"
  # The key material and the client's configuration end with the job.
  [ ! -e "$tls" ]
  [ ! -e scheduler.json ]
  [ ! -e scheduler.tls.json ]
  assert_no_job_processes
}

@test "the printed connect line works as written, and a production PROGRAM needs no certificate options" {
  submit_background launch-dask-cluster-path.pbs -l select=2:ncpus=1:mem=1gb -l walltime=00:03:00
  jobid=$(background_job_id)
  "$PY" "$KIT/helpers/dashboard_url.py" --wait 90 scheduler.json
  # The banner is also in the logs folder while the job runs (PBS shows .o files at the end).
  line=$(sed -n 's/^  connect:   //p' "dask-logs/$jobid/cluster-info.txt")
  [[ $line == *"Security("* ]]
  run "$PY" -c "$line; print('ran', client.submit(sum, [1, 2]).result())"
  [ "$output" = "ran 3" ]
  qdel "$jobid"
  wait "$JOB_QSUB_PID"

  # Plain Client(scheduler_file=...) in PROGRAM: the job hands it the certificate.
  printf 'from distributed import Client\nprint("program ran", Client(scheduler_file="scheduler.json").submit(len, "abc").result())\n' >plain.py
  production_job "python3 plain.py"
  [ "$status" -eq 0 ]
  [[ $output == *"program ran 3"* ]]
  assert_no_job_processes
}

@test "TLS=no runs plain tcp and says so; DASHBOARD=off starts no dashboard" {
  printf 'from distributed import Client\nc = Client(scheduler_file="scheduler.json")\nprint("address", c.scheduler.address, c.submit(len, "ab").result())\n' >plain.py
  production_job "python3 plain.py" TLS=no,DASHBOARD=off
  [ "$status" -eq 0 ]
  echo "$output"
  [[ $output == *"address tcp://127.0.0.1:"*" 2"* ]]
  [[ $output == *"security:  none (TLS=no)"* ]]
  [[ $output == *"dashboard: off (DASHBOARD=off)"* ]]
  [[ $output == *'connect:   from dask.distributed import Client; client = Client(scheduler_file='* ]]
  [ ! -e "dask-logs/$(ls dask-logs)/tls" ]
  [ ! -e scheduler.tls.json ]
  assert_no_job_processes
}

@test "DASHBOARD=loopback listens on the node's loopback only and prints a tunnel to the node" {
  # The program lists the addresses that listen on the dashboard's port.
  cat >listeners.py <<'EOF'
import json
from distributed import Client

def listening(port):
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in open(table).readlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            host, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(host)
    return sorted(found)

print("listening on", listening(json.load(open("scheduler.json"))["services"]["dashboard"]))
workers = Client(scheduler_file="scheduler.json").scheduler_info(n_workers=-1)["workers"].values()
print("workers listening on", sorted({h for w in workers for h in listening(w["services"]["dashboard"])}))
EOF
  production_job "python3 listeners.py" DASHBOARD=loopback
  [ "$status" -eq 0 ]
  echo "$output"
  [[ $output == *"listening on ['0100007F']"* ]]
  [[ $output == *"workers listening on ['0100007F']"* ]]  # the workers' own pages too
  [[ $output == *"dashboard: http://localhost:"*"/status on node node00 only (DASHBOARD=loopback)"* ]]
  [[ $output =~ tunnel:\ +ssh\ -N\ -L\ ([0-9]+):localhost:([0-9]+)\ -J\ [^\ ]+\ node00\  ]]

  # The default (network) listens on every address.
  rm -f dask-wordcount.o*
  production_job "python3 listeners.py"
  [[ $output == *"listening on ["*"'00000000'"* || $output == *"listening on ["*"'00000000000000000000000000000000'"* ]]
  [[ $output == *"plain HTTP, open to anyone who reaches the node"* ]]
  assert_no_job_processes
}
