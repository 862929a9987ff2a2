#!/bin/sh
# timed.sh DIR NAME COMMAND... — run COMMAND; write its wall-clock seconds to DIR/NAME; keep its status.
dir=$1 name=$2
shift 2
mkdir -p "$dir"
t0=$(date +%s.%N)
"$@"
status=$?
t1=$(date +%s.%N)
echo "$t0 $t1" | awk '{ printf "%.1f\n", $2 - $1 }' >"$dir/$name"
exit $status
