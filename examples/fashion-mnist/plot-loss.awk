# plot-loss.awk — the training loss of a moco-pretrain --log file as an SVG line chart.
#   awk -f plot-loss.awk run/log.jsonl > loss.svg
# Reads the "step" and "loss" fields of each JSON line (moco-pretrain writes them flat, one object
# per line), scales them into a 640x360 chart with axes, tick labels and the final value.
function field(name,   m) {
    if (match($0, "\"" name "\":[-+0-9.eE]+")) return substr($0, RSTART + length(name) + 3, RLENGTH - length(name) - 3) + 0
    return ""
}
{
    s = field("step"); l = field("loss")
    if (s == "" || l == "") next
    n++; step[n] = s; loss[n] = l
    if (n == 1 || l < lo) lo = l
    if (n == 1 || l > hi) hi = l
    if (s > last) last = s
}
END {
    if (n == 0) { print "plot-loss.awk: no step/loss lines" > "/dev/stderr"; exit 1 }
    W = 640; H = 360; L = 60; R = 20; T = 30; B = 40
    if (hi == lo) hi = lo + 1
    pad = (hi - lo) * 0.05; lo -= pad; hi += pad
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    printf "<text x=\"%d\" y=\"18\">MoCo v2 pretraining loss (InfoNCE) by step</text>\n", L
    printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, H - B, W - R, H - B
    printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, T, L, H - B
    for (k = 0; k <= 4; k++) {
        v = lo + (hi - lo) * k / 4; y = H - B - (H - B - T) * k / 4
        printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", L - 6, y + 4, v
        printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, y, W - R, y
        x = L + (W - L - R) * k / 4
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", x, H - B + 16, last * k / 4
    }
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 6
    printf "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\""
    for (i = 1; i <= n; i++)
        printf "%.1f,%.1f ", L + (W - L - R) * step[i] / last, H - B - (H - B - T) * (loss[i] - lo) / (hi - lo)
    printf "\"/>\n"
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">last: %.3f at step %d</text>\n", W - R, T + 12, loss[n], step[n]
    print "</svg>"
}
