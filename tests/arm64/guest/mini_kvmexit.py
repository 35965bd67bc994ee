"""Throwaway stand-in for kvmexit, used ONLY to develop the harness itself.

Enabled with KVMEXIT_E2E_TOOL=mini; the pytest tests refuse its results unless
that variable is also set for pytest.  Implements the slice of the kvmexit CLI
contract the scenarios use: ``[--json] [--by thread] [-i SECS] [DURATION]``,
the ``kvmexit: tracing`` marker on stderr, and kvmexit/2-like rows.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from bcc import BPF

PROG = r"""
struct start_t { u64 ts; u32 ret; u32 ec; };
struct key_t { u32 tgid; u32 tid; u32 ret; u32 ec; };
struct val_t { u64 count; u64 pairs; u64 total; u64 min; u64 max; };
BPF_HASH(starts, u32, struct start_t, 16384);
BPF_HASH(stats, struct key_t, struct val_t, 65536);
TRACEPOINT_PROBE(kvm, kvm_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct start_t s = {bpf_ktime_get_ns(), args->ret, args->esr_ec};
    starts.update(&tid, &s);
    struct key_t k = {id >> 32, tid, s.ret, s.ec};
    struct val_t zero = {0, 0, 0, ~0ULL, 0};
    struct val_t *v = stats.lookup_or_try_init(&k, &zero);
    if (v) __sync_fetch_and_add(&v->count, 1);
    return 0;
}
TRACEPOINT_PROBE(kvm, kvm_entry) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct start_t *s = starts.lookup(&tid);
    if (!s) return 0;
    u64 d = bpf_ktime_get_ns() - s->ts;
    struct key_t k = {id >> 32, tid, s->ret, s->ec};
    starts.delete(&tid);
    struct val_t *v = stats.lookup(&k);
    if (!v) return 0;
    v->pairs++; v->total += d;
    if (d < v->min) v->min = d;
    if (d > v->max) v->max = d;
    return 0;
}
"""
TYPES = {0: "IRQ", 1: "EL1_SERROR", 3: "IL", 0xBADCA11: "HYP_GONE"}
ECS = {0x01: "WFx", 0x16: "HVC64", 0x18: "SYS64", 0x20: "IABT_LOW", 0x24: "DABT_LOW"}


def snapshot(b):
    out = {}
    for k, v in b["stats"].items():
        out[(k.tgid, k.tid, k.ret, k.ec)] = (v.count, v.pairs, v.total, v.min, v.max)
    return out


def rows(now, before):
    res = []
    for key, v in sorted(now.items()):
        b = before.get(key, (0, 0, 0, 0, 0))
        count, pairs = v[0] - b[0], v[1] - b[1]
        if count == 0:
            continue
        tgid, tid, ret, ec = key
        reason = ECS.get(ec, "EC_%#x" % ec) if ret == 2 else TYPES.get(ret, "TYPE_%d" % ret)
        try:
            with open("/proc/%d/task/%d/comm" % (tgid, tid)) as f:
                comm = f.read().strip()
        except OSError:
            comm = ""
        total = v[2] - b[2]
        res.append(
            {
                "tgid": tgid,
                "tid": tid,
                "comm": comm,
                "vm": None,
                "vcpu": None,
                "reason": reason,
                "count": count,
                "pairs": pairs,
                "avg_ns": total / pairs if pairs else None,
                "min_ns": v[3],
                "max_ns": v[4],
            }
        )
    return res


def main():
    args = sys.argv[1:]
    interval = None
    if "-i" in args:
        interval = float(args[args.index("-i") + 1])
    b = BPF(text=PROG)
    sys.stderr.write("kvmexit: tracing (mini stand-in)\n")
    sys.stderr.flush()
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    prev = snapshot(b)
    while not stop:
        time.sleep(interval or 0.2)
        if interval and not stop:
            cur = snapshot(b)
            print(json.dumps({"schema": "kvmexit/2", "interval": {} if interval else None, "rows": rows(cur, prev)}))
            sys.stdout.flush()
            prev = cur
    cur = snapshot(b)
    print(json.dumps({"schema": "kvmexit/2", "interval": {} if interval else None, "rows": rows(cur, prev)}))


if __name__ == "__main__":
    main()
