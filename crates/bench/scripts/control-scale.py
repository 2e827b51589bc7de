#!/usr/bin/env python3
"""Measures the control plane of `ikukantai up` at scale (docs/benchmarks.md, "Control plane at
scale"). Two measurements, each on a fresh fleet and state directory:

    control-scale.py BINARY idle [N ...]    # default: 0 1000 10000
    control-scale.py BINARY burst [COUNT]   # default: 300

idle: N Services at zero (min-scale 0, initial-scale 0: nothing runs) are applied in files of
BATCH (500) documents; after SETTLE_S (20) s, the CPU of the `up` process (utime + stime from
/proc/PID/stat) over IDLE_S (60) s of idle, as a share of one core.

burst: one Service `cold` at zero is applied and left to settle; then COUNT Services with
Knative's default initial scale (1) in one apply, and right after it returns a request to `cold`
through node3's gateway: its end-to-end latency (send to the last byte of the answer). Then how
long until all COUNT have a ready instance, and the CPU meanwhile of `up` and of its instances.

Both use the API on 127.0.0.1:7791, gateways on 127.0.1.*:18180, admin ports 19190 (apart from
fleet-scale.py's, so both can run on one machine, one after the other), the demo topology with
room for every instance, and /tmp/ikukantai-control-scale as the state directory."""
import json, os, signal, subprocess, sys, threading, time, urllib.request

BIN, MODE = sys.argv[1], sys.argv[2]
ARGS = [int(x) for x in sys.argv[3:]]
API, GATEWAY_PORT, ADMIN_PORT = '127.0.0.1:7791', 18180, 19190
BATCH = int(os.environ.get('BATCH', '500'))
SETTLE_S = int(os.environ.get('SETTLE_S', '20'))
IDLE_S = int(os.environ.get('IDLE_S', '60'))
PERF_OUT = os.environ.get('PERF_OUT')
STATE = '/tmp/ikukantai-control-scale'
TICK = os.sysconf('SC_CLK_TCK')
ENV = dict(os.environ, IKUKANTAI_API=API)
TOPOLOGY = """nodes:
  - {name: node1, labels: {tier: cloud}, capacity: 400}
  - {name: node2, labels: {tier: cloud}, capacity: 400}
  - {name: node3, labels: {tier: edge}, capacity: 400}
links:
  - {between: [node1, node3], rtt: 50ms}
  - {between: [node2, node3], rtt: 50ms}
default_rtt: 0.5ms
"""


def service(name, annotations):
    notes = ''.join(f'\n        {k}: "{v}"' for k, v in annotations.items())
    meta = f'\n    metadata:\n      annotations:{notes}' if notes else ''
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:{meta}
    spec:
      containers:
        - image: ikukantai/hello
          command: [ikukantai, function, hello]
"""


AT_ZERO = {'autoscaling.knative.dev/min-scale': '0', 'autoscaling.knative.dev/initial-scale': '0'}


def cli(*args):
    return subprocess.run([BIN, *args], env=ENV, capture_output=True, text=True)


def cpu_ticks(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])


def children_ticks(pid):
    """CPU of the live children of `pid` (the instances' processes), and how many there are."""
    total = count = 0
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                f = open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(f[1]) == pid:
                total += int(f[11]) + int(f[12])
                count += 1
    return total, count


def start_fleet():
    subprocess.run(['rm', '-rf', STATE])
    os.makedirs(STATE)
    topo = os.path.join(STATE, 'topology.yaml')
    open(topo, 'w').write(TOPOLOGY)
    up = subprocess.Popen([BIN, 'up', '--topology', topo, '--state-dir', STATE, '--api', API,
                           '--gateway-port', str(GATEWAY_PORT), '--admin-port', str(ADMIN_PORT)],
                          env=ENV, stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(STATE, 'up.log'), 'w'))
    while cli('get', 'nodes').returncode != 0:
        time.sleep(0.05)
    return up


def stop_fleet(up):
    up.send_signal(signal.SIGINT)
    try:
        up.wait(timeout=120)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait()


def apply(docs, name):
    path = os.path.join(STATE, name)
    open(path, 'w').write('---\n'.join(docs))
    t0 = time.time()
    r = cli('apply', '-f', path)
    if r.returncode != 0:
        sys.exit(f'apply {name} failed: {r.stderr.strip()}')
    return time.time() - t0


def idle(n):
    up = start_fleet()
    t0 = time.time()
    for b in range(0, n, BATCH):
        apply([service(f's{i:05}', AT_ZERO) for i in range(b, min(n, b + BATCH))], f'batch-{b}.yaml')
    applied = time.time() - t0
    time.sleep(SETTLE_S)
    c0, w0 = cpu_ticks(up.pid), time.time()
    time.sleep(IDLE_S)
    c1, w1 = cpu_ticks(up.pid), time.time()
    load = os.getloadavg()[0]
    stop_fleet(up)
    share = 100 * (c1 - c0) / TICK / (w1 - w0)
    print(f'| {n} | {applied:.1f} s | {share:.2f} % | {w1 - w0:.0f} s | {load:.1f} |', flush=True)


def ready_revisions():
    r = cli('get', 'revisions', '-o', 'json')
    return {x['service']: x['ready'] for x in json.loads(r.stdout)} if r.returncode == 0 else {}


class Responsiveness(threading.Thread):
    """How long `up` takes to answer a gateway's /healthz (same process, same runtime), asked
    every 100 ms: whether anything else in it gets its turn meanwhile."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.failed, self.done = [], 0, threading.Event()

    def run(self):
        url = f'http://127.0.1.1:{ADMIN_PORT}/healthz'
        while not self.done.is_set():
            t = time.time()
            try:
                urllib.request.urlopen(url, timeout=60).read()
            except OSError:
                self.failed += 1
            self.samples.append(time.time() - t)
            time.sleep(0.1)

    def summary(self):
        self.done.set()
        self.join()
        xs = sorted(self.samples)
        return (f'median {xs[len(xs) // 2] * 1e3:.0f} ms, p99 {xs[int(len(xs) * .99)] * 1e3:.0f} ms, '
                f'max {xs[-1] * 1e3:.0f} ms, {self.failed} of {len(xs)} failed')


def burst(count):
    up = start_fleet()
    apply([service('cold', AT_ZERO)], 'cold.yaml')
    time.sleep(SETTLE_S)
    docs = [service(f'b{i:03}', {}) for i in range(count)]
    # PERF_OUT=FILE: where `up`'s CPU goes meanwhile (perf record, call graphs), until all are ready.
    perf = PERF_OUT and subprocess.Popen(['perf', 'record', '-F', '199', '--call-graph', 'dwarf,16384', '-p', str(up.pid), '-o', PERF_OUT],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c0, (k0, _), w0 = cpu_ticks(up.pid), children_ticks(up.pid), time.time()
    probe = Responsiveness()
    probe.start()
    applied = apply(docs, 'burst.yaml')
    req = urllib.request.Request(f'http://127.0.1.3:{GATEWAY_PORT}/', headers={'Host': 'cold.default'})
    t = time.time()
    body = urllib.request.urlopen(req, timeout=120).read().decode().strip()
    cold = time.time() - t
    print(f'apply of {count} Services returned after {applied:.2f} s; then the cold request to '
          f'`cold` took {cold * 1e3:.0f} ms end to end ({body!r})', flush=True)
    ready_at = None
    while time.time() - w0 < 900:
        ready = ready_revisions()
        if sum(1 for s, r in ready.items() if s.startswith('b') and r > 0) >= count:
            ready_at = time.time() - w0
            break
        time.sleep(1)
    c1, (k1, procs), w1 = cpu_ticks(up.pid), children_ticks(up.pid), time.time()
    load = os.getloadavg()[0]
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    stop_fleet(up)
    span = w1 - w0
    print(f'all {count} ready {ready_at:.1f} s after the apply began' if ready_at else
          f'not all {count} ready after {span:.0f} s')
    print(f'a gateway\'s /healthz meanwhile: {probe.summary()}')
    print(f'meanwhile ({span:.1f} s): up {100 * (c1 - c0) / TICK / span:.0f} % of a core, its {procs} '
          f'instance processes {100 * (k1 - k0) / TICK / span:.0f} %; load average {load:.1f}')


if MODE == 'idle':
    print('| Services at zero | apply took | CPU of `up`, idle | over | load average |')
    print('|---|---|---|---|---|')
    for n in ARGS or [0, 1000, 10000]:
        idle(n)
elif MODE == 'burst':
    burst(ARGS[0] if ARGS else 300)
else:
    sys.exit(__doc__)
