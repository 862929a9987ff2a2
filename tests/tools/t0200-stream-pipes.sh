# t0200-stream-pipes.sh — streams through real pipes: producers stop quietly when the reader goes,
# zero-copy pipes carry exact data, refusal to write binary to a terminal.
. "$(dirname "$0")/lib.sh"
I=$BIN/moco-inspect
MK=$HELPERS/mkstream

expect producer_ends_quietly_when_reader_exits 0 EMPTY -- "$MK --records 200000 --level 0 | head -c 100 >/dev/null; exit \$((\$? + 0))"
# The exit status of the producer itself (not of the pipeline's last command):
expect producer_status_is_zero_on_epipe 0 '' -- "{ $MK --views --records 100000 --level 0; echo \$? >$T/st; } | head -c 5000 >/dev/null; [ \"\$(cat $T/st)\" = 0 ]"
expect zstd_producer_status_is_zero_on_epipe 0 '' -- "{ $MK --views --records 100000 --level 1; echo \$? >$T/st2; } | head -c 5000 >/dev/null; [ \"\$(cat $T/st2)\" = 0 ]"
expect zero_copy_pipe_carries_exact_data 0 '' -- "$MK --views --records 3000 --level 0 --zero-copy | $I --values views --record 2999 >$T/zc && $MK --views --records 3000 --level 0 | $I --values views --record 2999 >$T/plain && cmp $T/zc $T/plain"
expect zero_copy_to_a_file_falls_back_to_write 0 '' -- "$MK --records 50 --level 0 --zero-copy >$T/zc.tsz && $I -q $T/zc.tsz"
if command -v script >/dev/null 2>&1; then
    expect refuses_binary_to_a_terminal 0 '' -- "script -qec '$MK --records 1' /dev/null | grep -q 'refusing to write a binary stream to a terminal'"
fi
