"""A randomized crash test of the write path: writes and deletes at random durability levels
through random nodes of a 3-node cluster while random nodes are killed with `kill -9` (some
restarted on a wiped disk, as a pod rescheduled onto a fresh disk) at random moments. Then
`sync` on every node, and the origin must hold, for every key, the last write acknowledged at a
durability that the faults did not exceed, or a later write (one that was acknowledged at a
lower durability, or whose answer never came: such a request may or may not have been
applied). Nothing older, and no torn body, ever."""

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import botocore.exceptions

from conftest import payload
from test_cluster import Cluster
from test_writeback import sync, with_durability

KIB = 1024
CRASH_SECONDS = float(os.environ.get("CAIRN_CRASH_SECONDS", "75"))
SEED = int(os.environ.get("CAIRN_CRASH_SEED", str(random.randrange(1 << 30))))
WB = ('[writeback]\nreplicas = 2\nretry_min = "100ms"\nretry_max = "1s"\ntakeover_after = "3s"\n'
      'upload_defer = "2s"\n')
KEYS_PER_WORKER = 3
WORKERS = 4


def print_node_logs(c, lines=80):
    """The warnings and errors at the end of each node's log, for a failure to explain itself."""
    for i, n in enumerate(c.nodes):
        text = (n.workdir / "node.log").read_text(errors="replace").splitlines()
        notable = [line for line in text if " WARN " in line or " ERROR " in line]
        print(f"--- n{i}: last {lines} warnings and errors of {len(text)} log lines")
        print("\n".join(notable[-lines:]))


class Op:
    def __init__(self, kind, durability, node, seed, size):
        self.kind, self.durability, self.node, self.seed, self.size = kind, durability, node, seed, size
        self.acked = None       # time of the answer, None: failed or never answered
        self.started = time.time()

    def value(self):
        return None if self.kind == "delete" else payload(self.size, seed=self.seed)


def test_random_crashes_lose_no_acknowledged_write(tmp_path):
    rng = random.Random(SEED)
    print(f"seed {SEED} (CAIRN_CRASH_SEED to replay)")
    # Metadata revalidated after 1 s, so every node serves the origin's final state at the end.
    c = Cluster(tmp_path, 3, chunk=256 * KIB, more_sections=WB, metadata="ttl:1s")
    history = {}          # key -> [Op]
    wipes = []            # (time, node index)
    faults = {"kills": 0, "wipes": 0}
    up = [threading.Event() for _ in c.nodes]
    for e in up:
        e.set()
    stop = threading.Event()
    torn_keys = []

    def worker(w):
        r = random.Random(SEED * 31 + w)
        keys = [f"k{w}-{i}" for i in range(KEYS_PER_WORKER)]
        while not stop.is_set():
            key = r.choice(keys)
            live = [i for i, e in enumerate(up) if e.is_set()]
            if not live:
                time.sleep(0.05)
                continue
            n = r.choice(live)
            if r.random() < 0.15:
                op = Op("delete", "origin", n, 0, 0)
            else:
                op = Op("put", r.choice(["local", "replicated", "origin"]), n, r.randrange(1 << 30),
                        r.choice([1, 100 * KIB, 700 * KIB, 2 * 1024 * KIB + 3]))
            history.setdefault(key, []).append(op)
            try:
                s3 = c.nodes[n].s3(connect_timeout=2, read_timeout=30)
                if op.kind == "delete":
                    s3.delete_object(Bucket="data", Key=key)
                else:
                    with_durability(s3, op.durability).put_object(Bucket="data", Key=key, Body=op.value())
                op.acked = time.time()
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                time.sleep(0.1)

    def torn_writer():
        # Bodies cut short on purpose: never acknowledged, never to appear anywhere.
        r = random.Random(SEED + 7)
        i = 0
        while not stop.is_set():
            n = r.randrange(len(c.nodes))
            if not up[n].is_set():
                time.sleep(0.1)
                continue
            key = f"torn-{i}"
            i += 1
            torn_keys.append(key)
            p = subprocess.Popen(
                ["curl", "-sS", "-m", "5", "-X", "PUT", "-H", f"x-cairn-durability: {r.choice(['local', 'replicated'])}",
                 "-H", "Content-Length: 1048576", "--data-binary", "@-", f"{c.nodes[n].endpoint}/data/{key}"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                p.stdin.write(b"t" * (r.randrange(1, 1024) * 1000))
                p.stdin.flush()
            except BrokenPipeError:
                pass
            time.sleep(r.uniform(0.05, 0.5))
            p.kill()
            p.wait()
            time.sleep(r.uniform(0.2, 1.0))

    def faulter():
        while not stop.is_set():
            time.sleep(rng.uniform(1.0, 4.0))
            if stop.is_set():
                break
            i = rng.randrange(len(c.nodes))
            up[i].clear()
            c.nodes[i].stop(signal.SIGKILL)
            faults["kills"] += 1
            if rng.random() < 0.35:
                shutil.rmtree(c.nodes[i].cache_dir, ignore_errors=True)
                wipes.append((time.time(), i))
                faults["wipes"] += 1
            time.sleep(rng.uniform(0.0, 1.5))
            c.nodes[i].start()
            up[i].set()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    threads += [threading.Thread(target=torn_writer), threading.Thread(target=faulter)]
    try:
        for t in threads:
            t.start()
        time.sleep(CRASH_SECONDS)
        stop.set()
        for t in threads:
            t.join(120)
        for n in c.nodes:
            if not n.alive():
                n.start()
        for n in c.nodes:
            code, answer = sync(n, "", timeout="180s")
            if code != 200:
                print_node_logs(c)
            assert code == 200, json.dumps(answer)
        ops = sum(len(v) for v in history.values())
        acked = sum(1 for v in history.values() for o in v if o.acked)
        print(f"{ops} operations ({acked} acknowledged) on {len(history)} keys, {faults['kills']} kill -9, "
              f"{faults['wipes']} of them with the disk wiped, {len(torn_keys)} torn bodies")
        assert faults["kills"] >= 5 and acked >= 50

        def guaranteed(op):
            if not op.acked:
                return False
            if op.durability == "origin" or op.kind == "delete":
                return True
            later_wipes = [i for t, i in wipes if t >= op.acked]
            if op.durability == "local":
                return op.node not in later_wipes
            return len(later_wipes) <= 1  # replicated: survives the loss of one host

        # The origin is read at once: a sync that answered before its writes landed shows here.
        root = c.origin.root
        at_origin = {key: (root / key).read_bytes() if (root / key).exists() else None for key in history}
        for key, ops in history.items():
            actual = at_origin[key]
            last = max((i for i, o in enumerate(ops) if guaranteed(o)), default=None)
            allowed = [] if last is not None else [None]
            allowed += [o.value() for o in ops[(last if last is not None else 0):]]
            describe = [(o.kind, o.durability, o.node, bool(o.acked), guaranteed(o)) for o in ops]
            assert actual in allowed, (f"{key}: the origin holds {len(actual) if actual else 'nothing'} bytes "
                                       f"that no allowed operation wrote; history {describe}")
        # Every node serves what the origin has, once its cached metadata (ttl:1s) is revalidated.
        time.sleep(1.5)
        for key in history:
            for n in c.nodes:
                try:
                    got = n.s3().get_object(Bucket="data", Key=key)["Body"].read()
                except botocore.exceptions.ClientError as e:
                    assert e.response["Error"]["Code"] == "NoSuchKey"
                    got = None
                assert got == at_origin[key], f"{key}: {n.endpoint} serves other bytes than the origin"
        for key in torn_keys:
            assert not (root / key).exists(), f"a torn body reached the origin: {key}"
    finally:
        stop.set()
        c.stop()
