#!/usr/bin/env python3
"""Measures an `ikukantai up` fleet (docs/benchmarks.md, "Local fleet at scale"): how long until
its API and every gateway answer, its idle CPU, probes per node per round (from the gateways' metrics), the error
of the RTTs it measured against the configured ones, and, with a Service of 10 instances spread
over 10 nodes, the share of routed pairs (origin gateway -> node with an instance) whose measured
RTT is within max(1 ms, 10 %) of the configured one, each round.

    fleet-scale.py BINARY TOPOLOGY [--no-service]

Uses the API on 127.0.0.1:7790, gateways on 127.0.1.*:18080 and admin ports 19090, and
/tmp/ikukantai-fleet-scale as the state directory. IDLE_S (60) and ROUNDS (6) tune it."""
import json, os, re, subprocess, sys, time, signal, urllib.request

BIN, TOPO = sys.argv[1], sys.argv[2]
SERVICE_YAML = """apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "10"
        ikukantai.dev/placement: spread
    spec:
      containers:
        - image: ikukantai/hello
          command: [ikukantai, function, hello]
"""
ROUNDS = int(os.environ.get('ROUNDS', '6'))
IDLE_S = int(os.environ.get('IDLE_S', '60'))
WANT = 10
API, ADMIN_PORT, INTERVAL = '127.0.0.1:7790', 19090, 5.0
state = '/tmp/ikukantai-fleet-scale'
subprocess.run(['rm', '-rf', state]); os.makedirs(state)
SERVICE = None if '--no-service' in sys.argv else os.path.join(state, 'service.yaml')
if SERVICE:
    open(SERVICE, 'w').write(SERVICE_YAML)
env = dict(os.environ, IKUKANTAI_API=API)
tick = os.sysconf('SC_CLK_TCK')

def cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])

def cli(*args):
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True)

def probes_by_node(n):
    out = []
    for i in range(n):
        text = urllib.request.urlopen(f'http://127.0.1.{i + 1}:{ADMIN_PORT}/metrics', timeout=5).read().decode()
        out.append(sum(float(v) for v in re.findall(r'^ikukantai_gateway_probes_total\{[^}]*\} (\S+)', text, re.M)))
    return out

t0 = time.time()
up = subprocess.Popen([BIN, 'up', '--topology', TOPO, '--state-dir', state, '--api', API,
                       '--gateway-port', '18080', '--admin-port', str(ADMIN_PORT)],
                      env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, 'up.log'), 'w'))
while cli('get', 'nodes').returncode != 0:
    time.sleep(0.02)
ready = time.time() - t0
n = len(json.loads(cli('get', 'nodes', '-o', 'json').stdout))

def answers(i):
    try:
        return urllib.request.urlopen(f'http://127.0.1.{i + 1}:{ADMIN_PORT}/healthz', timeout=1).status == 200
    except OSError:
        return False

waiting = set(range(n))
while waiting:
    waiting = {i for i in waiting if not answers(i)}
    if waiting:
        time.sleep(0.02)
gateways = time.time() - t0
print(f'{n} nodes: API answering {ready:.2f} s after start, every gateway {gateways:.2f} s; '
      f'load average {os.getloadavg()[0]:.1f}')

def idle(label, seconds):
    time.sleep(20)
    c0, w0, p0 = cpu(up.pid), time.time(), probes_by_node(n)
    time.sleep(seconds)
    c1, w1, p1 = cpu(up.pid), time.time(), probes_by_node(n)
    rounds = (w1 - w0) / INTERVAL
    per = [(b - a) / rounds for a, b in zip(p0, p1)]
    print(f'{label}: {100 * (c1 - c0) / tick / (w1 - w0):.1f} % of one core over {w1 - w0:.0f} s; '
          f'probes per node per round mean {sum(per) / n:.1f}, most {max(per):.1f}; fleet {sum(per):.0f} per round; '
          f'load average {os.getloadavg()[0]:.1f}')

def measured_stats(l):
    ratios, errs = [], []
    for i in range(n):
        for j in range(n):
            m = l['measured'][i][j]
            if i != j and m is not None:
                c = l['configured'][i][j]
                ratios.append(m / c); errs.append(m - c)
    ratios.sort(); errs.sort()
    q = lambda xs, p: xs[round((len(xs) - 1) * p)]
    return (f'{len(errs)} pairs measured: measured/configured median {q(ratios, .5):.2f}x, p90 {q(ratios, .9):.2f}x, '
            f'error median {q(errs, .5):+.2f} ms, worst {max(errs, key=abs):+.2f} ms')

idle('idle, no services', IDLE_S)
print('  ' + measured_stats(json.loads(cli('latency', '-o', 'json').stdout)))
if SERVICE:
    print(cli('apply', '-f', SERVICE).stdout.strip())
    for _ in range(600):
        inst = json.loads(cli('get', 'instances', '-o', 'json').stdout)
        if len(inst) >= WANT and all(i['state'] == 'Ready' for i in inst):
            break
        time.sleep(1)
    hosts = sorted({i['node'] for i in inst})
    print(f'{len(inst)} instances on {len(hosts)} nodes')
    idle('idle, Service deployed (no traffic)', IDLE_S)
    worst_round = 100.0
    for r in range(ROUNDS):
        time.sleep(INTERVAL)
        l = json.loads(cli('latency', '-o', 'json').stdout)
        idx = {x: i for i, x in enumerate(l['nodes'])}
        ok = tot = 0
        for i in range(n):
            for h in hosts:
                j = idx[h]
                if i != j:
                    tot += 1
                    m, c = l['measured'][i][j], l['configured'][i][j]
                    ok += m is not None and abs(m - c) <= max(1.0, 0.1 * c)
        worst_round = min(worst_round, 100 * ok / tot)
        src = {}
        for i in range(n):
            for j in range(n):
                if i != j:
                    src[l['source'][i][j]] = src.get(l['source'][i][j], 0) + 1
        print(f'round {r}: routed pairs within max(1 ms, 10 %): {ok}/{tot} ({100 * ok / tot:.1f} %); '
              + measured_stats(l) + f'; sources {src}')
    print(f'worst round: {worst_round:.1f} % of routed pairs within max(1 ms, 10 %)')
up.send_signal(signal.SIGINT)
try:
    up.wait(timeout=60)
except subprocess.TimeoutExpired:
    up.kill()
