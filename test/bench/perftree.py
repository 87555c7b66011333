#!/usr/bin/env python3
"""Call trees of one process from `perf script` output.

    perf script -i perf-fig3-drain.data | python3 test/bench/perftree.py \
        --process lhdiscord_worker_main lhd_engine_claim lhd_engine_record

Picks the process (pid) with the most samples whose stack contains the
--process function (default: any postgres process, the busiest), prints the
shares of its samples by shared object and by first matching phase function
(the positional arguments), then the call tree below each of those functions
(--depth levels, branches under --min percent hidden).  Percentages are of
that process's samples.  Python 3 stdlib only; used for the profiles quoted
in BENCHMARKS.md.
"""
import argparse
import collections
import sys


def read_samples(stream):
    """Yield (comm, pid, [function...] leaf first, [dso...] leaf first)."""
    comm = pid = None
    funcs, dsos = [], []
    for line in stream:
        if not line.strip():
            if comm is not None:
                yield comm, pid, funcs, dsos
            comm, funcs, dsos = None, [], []
            continue
        if not line[0].isspace():
            fields = line.split()
            comm, pid = fields[0], fields[1]
            continue
        fields = line.split()
        if comm is not None and len(fields) >= 2:
            funcs.append(fields[1].split("+")[0])
            dsos.append(fields[-1].strip("()"))
    if comm is not None:
        yield comm, pid, funcs, dsos


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--process", help="function that identifies the process to report")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--min", type=float, default=0.8, help="hide branches under this percent")
    ap.add_argument("phases", nargs="*", help="functions to break down")
    args = ap.parse_args()

    samples = list(read_samples(sys.stdin))
    if args.process:
        owners = collections.Counter(s[1] for s in samples if args.process in s[2])
    else:
        owners = collections.Counter(s[1] for s in samples if s[0] == "postgres")
    if not owners:
        sys.exit("no matching samples")
    pid = owners.most_common(1)[0][0]
    mine = [s for s in samples if s[1] == pid]
    total = len(mine)
    print("pid %s: %d of %d samples" % (pid, total, len(samples)))

    print("by shared object:")
    for dso, n in collections.Counter(s[3][0] if s[3] else "?" for s in mine).most_common(8):
        print("  %5.1f%%  %s" % (100.0 * n / total, dso))

    if args.phases:
        print("by phase:")
        phase = collections.Counter()
        for s in mine:
            phase[next((p for p in args.phases if p in s[2]), "(elsewhere)")] += 1
        for name, n in phase.most_common():
            print("  %5.1f%%  %s" % (100.0 * n / total, name))

    for root in args.phases:
        tree = collections.Counter()
        for s in mine:
            frames = s[2][::-1]
            if root in frames:
                i = frames.index(root)
                path = tuple(frames[i + 1:i + 1 + args.depth])
                for d in range(1, len(path) + 1):
                    tree[path[:d]] += 1
        print("below %s:" % root)

        def show(prefix, indent):
            kids = [(k, n) for k, n in tree.items()
                    if len(k) == len(prefix) + 1 and k[:len(prefix)] == prefix]
            for k, n in sorted(kids, key=lambda kv: -kv[1]):
                if 100.0 * n / total >= args.min:
                    print("  %s%5.1f%%  %s" % ("  " * indent, 100.0 * n / total, k[-1]))
                    show(k, indent + 1)
        show((), 0)


if __name__ == "__main__":
    main()
