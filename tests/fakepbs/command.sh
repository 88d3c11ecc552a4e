# shellcheck shell=bash
# The body of every fake PBS command in bin/: `source command.sh NAME ARGS...` runs
# `fakepbs.py NAME ARGS...`, or for pbsdsh `tm.py ARGS...` (see README.md beside this file).
fakepbs_dir=${BASH_SOURCE[0]%/*}  # bin/* source it by a path with a slash
# A non-interactive bash unsets PS1 and PS2 (dash would drop BASH_FUNC_*%% instead): put
# them back from this process's own environment, so that qsub -V sends what a real qsub does.
while IFS= read -r -d '' pair; do
  case $pair in PS1=* | PS2=*) export "${pair%%=*}=${pair#*=}" ;; esac
done </proc/$$/environ
# -c with an import, not the script's path: Python then reads the module's compiled form
# when there is one (a script run by its path is compiled on every start). -S: it needs
# only the standard library, and the site's start-up hooks cost time on every call.
# (fakepbs.ENTRY, which starts the MoM, is the same line.) pbsdsh, run once per chunk,
# is tm.py alone: it starts without fakepbs.py's imports.
if [[ $1 == pbsdsh ]]; then
  exec "${FAKEPBS_PYTHON:-python3}" -S -c 'import sys; sys.path[0:0] = [sys.argv[1]]; import tm; sys.exit(tm.main(sys.argv[3:]))' \
    "$fakepbs_dir" "$@"
fi
exec "${FAKEPBS_PYTHON:-python3}" -S -c 'import sys; sys.path[0:0] = [sys.argv[1]]; import fakepbs; sys.exit(fakepbs.main(sys.argv[2:]))' \
  "$fakepbs_dir" "$@"
