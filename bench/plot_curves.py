#!/usr/bin/env python3
"""plot_curves.py - recall/QPS curves from JSON lines, as a PNG (gnuplot)
and a Markdown table.

usage: plot_curves.py OUT_PREFIX TITLE FILE:LABEL [FILE:LABEL ...]

Each FILE holds JSON objects, one per line, with at least recall_at_k and
qps (what `quiverbench offline --json --sweep` and the bench/compare_*
scripts print).  Writes OUT_PREFIX.png (recall@k on x, QPS on a log y axis,
one line per series) and OUT_PREFIX.md (one table per series), and prints
the table.  Uses only the Python standard library and gnuplot.
"""
import json
import os
import subprocess
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def param_of(row):
    for key in ("nprobe", "ef"):
        if key in row:
            return "%s=%s" % (key, row[key])
    return "-"


def main(argv):
    if len(argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    prefix, title, specs = argv[1], argv[2], argv[3:]
    series = []
    for spec in specs:
        path, _, label = spec.partition(":")
        rows = sorted(load(path), key=lambda r: r["recall_at_k"])
        if rows:
            series.append((label or os.path.basename(path), rows))
    if not series:
        sys.stderr.write("plot_curves.py: no data\n")
        return 1

    lines = ["### %s" % title, ""]
    for label, rows in series:
        lines += ["**%s**" % label, "", "| param | recall@k | QPS | p50 µs | p99 µs |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append("| %s | %.4f | %.0f | %.1f | %s |" % (
                param_of(r), r["recall_at_k"], r["qps"], r.get("p50_us", float("nan")),
                "%.1f" % r["p99_us"] if "p99_us" in r else "-"))
        lines.append("")
    table = "\n".join(lines)
    with open(prefix + ".md", "w") as f:
        f.write(table + "\n")
    print(table)

    datfiles = []
    for i, (label, rows) in enumerate(series):
        dat = "%s.%d.dat" % (prefix, i)
        with open(dat, "w") as f:
            for r in rows:
                f.write("%f %f\n" % (r["recall_at_k"], r["qps"]))
        datfiles.append((dat, label))
    plot = ", ".join("'%s' using 1:2 with linespoints lw 2 pt 7 title '%s'" %
                     (d, l.replace("'", "")) for d, l in datfiles)
    script = "\n".join([
        "set terminal pngcairo size 900,600 font 'sans,11' noenhanced",
        "set output '%s.png'" % prefix,
        "set title '%s'" % title.replace("'", ""),
        "set xlabel 'recall@10'",
        "set ylabel 'queries per second'",
        "set logscale y",
        "set grid",
        "set key bottom left",
        "plot " + plot,
    ])
    subprocess.run(["gnuplot"], input=script.encode(), check=True)
    for dat, _ in datfiles:
        os.unlink(dat)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
