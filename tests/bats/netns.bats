#!/usr/bin/env bats
# The kit on the fake PBS's network mode: each node its own namespace with an ib0, as on a
# cluster. INTERFACE keeps its default (auto); the client runs here, as on a login node.

load test_helper

setup_file() {
  if [[ $(id -u) -ne 0 ]] || ! PATH=$PATH:/usr/sbin:/sbin command -v ip >/dev/null; then
    skip "needs root and ip (network namespaces)"
  fi
}

# Start launch-dask-cluster-path.pbs in netns mode, in the background, with the default
# INTERFACE (auto): netns_job CHUNKS [VAR=VALUE,...] (CHUNKS chunks of ncpus=1:mem=1gb, 3
# minutes of walltime); sets JOB_QSUB_PID, its qsub's job id in qsub.out.
netns_job() {
  export FAKEPBS_NETNS=1
  qsub -W block=true -v "$(kit_vars)${2:+,$2}" -l "select=$1:ncpus=1:mem=1gb" -l walltime=00:03:00 \
    "$KIT/scripts/launch-dask-cluster-path.pbs" >qsub.out &
  JOB_QSUB_PID=$!
}

# A 3-chunk netns_job, waited for until it is ready; sets JOBID and DASHBOARD_URL (what
# dashboard_url.py prints from the login node).
auto_cluster() {
  netns_job 3
  run "$PY" "$KIT/helpers/dashboard_url.py" --wait 90 scheduler.json
  [ "$status" -eq 0 ]
  DASHBOARD_URL=$output
  JOBID=$(head -n 1 qsub.out)
}

# The job's subnet: its nodes' ib0 addresses are SUBNET.1, SUBNET.2, ...
job_subnet() {
  "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["netns"]["subnet"])' "$FAKEPBS_HOME/jobs/1/job.json"
}

# qdel the netns_job, whatever its qsub's exit status then; nothing of it may be left:
# no namespace, no process.
end_cluster() {
  qdel "$(head -n 1 qsub.out)"
  wait "$JOB_QSUB_PID" || true
  [ -z "$(leftover_namespaces)" ]
  assert_no_job_processes
}

# The job's namespaces and login link still present (empty when all are gone).
leftover_namespaces() {
  local tag
  tag=$("$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import netns; print(netns.tag_of(sys.argv[2]))' \
    "$KIT/tests/fakepbs" "$FAKEPBS_HOME")
  { ip netns list; ip -o link show; } | grep -e "fpbs-$tag-" -e "fpl$tag" || true
}

@test "netns: scheduler and workers on each node's ib0 address; the dashboard URL works from the login node" {
  auto_cluster
  subnet=$(job_subnet)
  [ "$DASHBOARD_URL" = "http://$subnet.1:8787/status" ]
  run "$PY" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)' "$DASHBOARD_URL"
  [ "$output" = 200 ]
  run with_client '
import socket
print("scheduler", client.scheduler.address.rsplit(":", 1)[0])
for addr, host in sorted(client.run(socket.gethostname).items()):
    print("worker", addr.rsplit(":", 1)[0], host)
print("scheduler host", client.run_on_scheduler(socket.gethostname))
'
  echo "$output"
  [ "${lines[0]}" = "scheduler tls://$subnet.1" ]
  [ "${lines[1]}" = "worker tls://$subnet.2 node01" ]
  [ "${lines[2]}" = "worker tls://$subnet.3 node02" ]
  [ "${lines[3]}" = "scheduler host node00" ]
  qdel "$JOBID"
  wait "$JOB_QSUB_PID"
  [ -z "$(leftover_namespaces)" ]
  assert_no_job_processes
}

@test "netns: DASHBOARD=loopback is unreachable from the login node but serves on the node" {
  netns_job 2 DASHBOARD=loopback
  "$PY" "$KIT/helpers/dashboard_url.py" --wait 90 scheduler.json
  port=$("$PY" -c 'import json; print(json.load(open("scheduler.json"))["services"]["dashboard"])')
  host=$("$PY" -c 'import json; print(json.load(open("scheduler.json"))["address"].split("//")[1].rsplit(":", 1)[0])')
  run "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "http://$host:$port/status"
  [ "$status" -ne 0 ]
  [[ $output == *"Connection refused"* ]]
  # Fetched by the scheduler's own event loop (a blocking fetch would wait on itself).
  run with_client "
async def fetch():
    from tornado.httpclient import AsyncHTTPClient
    return (await AsyncHTTPClient().fetch('http://127.0.0.1:$port/status')).code
print('on the node', client.run_on_scheduler(fetch))
"
  [ "$output" = "on the node 200" ]
  qdel "$(head -n 1 qsub.out)"
  wait "$JOB_QSUB_PID"
  [ -z "$(leftover_namespaces)" ]
}

@test "netns: an interface the nodes lack fails at once, listing the nodes' own interfaces" {
  export FAKEPBS_NETNS=1
  run qsub -W block=true -v "$(kit_vars),INTERFACE=eth0" -l select=2:ncpus=1:mem=1gb -l walltime=00:02:00 \
    "$KIT/scripts/launch-dask-cluster-path.pbs"
  [ "$status" -eq 1 ]
  run job_output dask-cluster-path
  [[ $output == *"interface 'eth0' does not exist on node node00 (it has: ib0 lo)"* ]]
  [ -z "$(leftover_namespaces)" ]
  assert_no_job_processes
}

@test "netns: the README's FAKEPBS_NETNS command works as written, with the default INTERFACE=auto" {
  cp -r "$KIT/scripts" "$KIT/helpers" "$KIT/examples" .
  ln -s "$KIT/.venv" .venv
  mkdir -p tests && ln -s "$KIT/tests/fakepbs" tests/fakepbs
  export PATH="$PWD/tests/fakepbs/bin:$PATH" FAKEPBS_NETNS=1
  run qsub -W block=true -l select=3:ncpus=2:mem=4gb scripts/launch-dask-wordcount.pbs
  [ "$status" -eq 0 ]
  run job_output dask-wordcount
  [[ $output =~ scheduler:\ tls://10\.99\.[0-9]+\.1: ]]
  [[ $output == *"total: "*" words"* ]]
  [ -z "$(leftover_namespaces)" ]
  assert_no_job_processes
}

# The addresses the cluster's scheduler and workers listen on, one per line.
cluster_addresses() {
  with_client '
print(client.scheduler.address)
for addr in sorted(client.scheduler_info()["workers"]):
    print(addr)
'
}

@test "netns: INTERFACE=auto takes ib0 beside an unroutable eth9, where the host names resolve" {
  export FAKEPBS_NETNS_LINKS=ib0,eth9:dark
  auto_cluster
  subnet=$(job_subnet)
  run cluster_addresses
  echo "$output"
  [[ ${lines[0]} == "tls://$subnet.1:"* ]]
  [[ ${lines[1]} == "tls://$subnet.2:"* ]]
  [[ ${lines[2]} == "tls://$subnet.3:"* ]]
  run cat "dask-logs/$JOBID/cluster-info.txt"
  [[ $output == *"network:   ib0 on node00, node01, node02 (INTERFACE=auto)"* ]]
  run cat dask-logs/"$JOBID"/*.iface
  [ "$(grep -c ' ib0 .* host-name$' <<<"$output")" -eq 3 ]
  end_cluster
}

@test "netns: names that resolve nowhere: the scheduler's node prefers ib0, the workers follow the route" {
  export FAKEPBS_NETNS_LINKS=ib0,eth9:dark FAKEPBS_NETNS_RESOLVE=none
  auto_cluster
  run cat dask-logs/"$JOBID"/*.iface
  echo "$output"
  [[ $output == *"node00 ib0 "*" ib"* ]]
  [[ $output == *"node01 ib0 "*" route"* ]]
  [[ $output == *"node02 ib0 "*" route"* ]]
  run with_client 'print(len(client.scheduler_info()["workers"]))'
  [ "$output" = 2 ]
  end_cluster
}

@test "netns: a cluster without InfiniBand (NCAR's ext): INTERFACE=auto takes ext, where ib0 would fail" {
  export FAKEPBS_NETNS_LINKS=ext,eth9:dark FAKEPBS_NETNS_RESOLVE=ext
  auto_cluster
  run cat "dask-logs/$JOBID/cluster-info.txt"
  [[ $output == *"network:   ext on node00, node01, node02 (INTERFACE=auto)"* ]]
  run with_client 'print(client.submit(sum, [1, 2]).result(), len(client.scheduler_info()["workers"]))'
  [ "$output" = "3 2" ]
  end_cluster
}

@test "netns: JupyterLab on node00's network, from the login node: the URL with its token, refused without, a kernel's plain Client, the dashboard through the proxy" {
  netns_job 3 JUPYTER=yes
  wait_jupyter
  subnet=$(job_subnet)
  [[ $BASE == "http://$subnet.1:$PORT" ]]
  run http_status "$URL"
  [ "$output" = "200 False" ]
  run http_status "$BASE/api/status"
  [ "$output" = 403 ]
  run http_status "$BASE/proxy/$DPORT/status" "$TOKEN"
  [ "$output" = "200 True" ]
  run cell '
import os
from dask.distributed import Client
client = Client(scheduler_file=os.environ["DASK_SCHEDULER_FILE"])
print(client.scheduler.address.rsplit(":", 1)[0], client.submit(sum, [1, 2]).result(), len(client.scheduler_info()["workers"]))
'
  [ "$output" = "tls://$subnet.1 3 2" ]
  end_cluster
}
