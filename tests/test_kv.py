"""The KV endpoint (Redis protocol) against real clients: redis-py in RESP2 and RESP3, redis-cli,
redis-benchmark; the command sequences of LMCache's `redis://` and `resp://` connectors; limits,
bad input and disconnects; eviction to disk and leases; a multi-node cluster with an owner killed."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import time

import pytest
import redis

from conftest import KV_PASSWORD, LocalOrigin, Node, payload
from test_cluster import Cluster

MIB = 1024 * 1024


@pytest.fixture
def kv(make_node, tmp_path):
    return make_node(LocalOrigin(tmp_path / "origin").toml())


def raw(node, data, read_until_close=False, timeout=10):
    """Sends raw bytes to the KV port and returns what comes back."""
    s = socket.create_connection((node.host, node.kv_port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not read_until_close and out.endswith(b"\r\n"):
                break
    except socket.timeout:
        pass
    s.close()
    return out


def auth_cmd():
    return f"*2\r\n$4\r\nAUTH\r\n${len(KV_PASSWORD)}\r\n{KV_PASSWORD}\r\n".encode()


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_commands(kv, protocol):
    r = kv.redis(protocol=protocol)
    assert r.ping()
    assert r.echo(b"hi") == b"hi"
    value = payload(3 * MIB, seed=protocol)
    assert r.set(b"k\x00bin", value)
    assert r.get(b"k\x00bin") == value
    assert r.strlen(b"k\x00bin") == len(value)
    assert r.get("missing") is None
    # SET options.
    assert r.set("nx", "1", nx=True)
    assert r.set("nx", "2", nx=True) is None
    assert r.set("xx", "1", xx=True) is None
    assert r.set("nx", "3", xx=True)
    assert r.set("nx", "4", get=True) == b"3"
    assert r.set("ttl", "v", ex=100)
    assert 99 <= r.ttl("ttl") <= 100
    assert 99_000 <= r.pttl("ttl") <= 100_000
    assert r.set("ttl", "w", keepttl=True)
    assert r.ttl("ttl") > 0
    assert r.set("ttl", "x")
    assert r.ttl("ttl") == -1
    assert r.ttl("missing") == -2
    assert r.expire("ttl", 50)
    assert r.pexpire("ttl", 200)
    assert 0 < r.pttl("ttl") <= 200
    assert r.set("px", "v", px=150)
    time.sleep(0.3)
    assert r.get("px") is None and r.get("ttl") is None
    # Multi-key commands.
    assert r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.mget("a", "nope", "c") == [b"1", None, b"3"]
    assert r.exists("a", "b", "nope", "a") == 3
    assert r.delete("a", "nope") == 1
    assert r.unlink("b", "c") == 2
    assert r.exists("a", "b", "c") == 0
    # Connection and server commands.
    assert r.select(0)
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.select(1)
    assert r.client_setname("worker-1")
    assert r.client_getname() in ("worker-1", b"worker-1")
    assert r.client_id() > 0
    assert r.dbsize() >= 2
    info = r.info()
    assert info["redis_version"] and "used_memory" in info and "keyspace_hits" in info
    assert "db0" in r.info("keyspace")
    assert r.command_count() > 10
    with pytest.raises(redis.ResponseError, match="kv.allow_flush"):
        r.execute_command("FLUSHALL")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("LPUSH", "l", "x")
    assert r.ping()


def test_auth_password_users_and_hello(make_node, tmp_path):
    n = make_node(LocalOrigin(tmp_path / "o").toml(), kv_extra='users = [{ user = "lmcache", password = "lm-pass" }]')
    with pytest.raises(redis.AuthenticationError):
        n.redis(password=None).get("x")
    with pytest.raises(redis.AuthenticationError):
        n.redis(password="wrong").ping()
    assert n.redis(username="lmcache", password="lm-pass").set("u", "1")
    assert n.redis(protocol=3, username="lmcache", password="lm-pass").get("u") == b"1"
    assert n.redis(protocol=3).get("u") == b"1"
    with pytest.raises(redis.AuthenticationError):
        n.redis(username="lmcache", password="nope").ping()
    # HELLO before AUTH is refused; QUIT is allowed.
    assert raw(n, b"HELLO 3\r\n").startswith(b"-NOAUTH")
    assert raw(n, b"GET u\r\n").startswith(b"-NOAUTH")
    assert raw(n, b"QUIT\r\n") == b"+OK\r\n"


def test_anonymous_only_when_configured(make_node, tmp_path):
    n = make_node(LocalOrigin(tmp_path / "o").toml(), kv_extra="allow_anonymous = true")
    assert n.redis(password=None).set("a", "b")
    assert n.redis(password=None).get("a") == b"b"


def test_redis_cli(kv):
    cli = ["redis-cli", "-h", kv.host, "-p", str(kv.kv_port), "-a", KV_PASSWORD, "--no-auth-warning"]
    run = lambda *a: subprocess.run(cli + list(a), capture_output=True, text=True, timeout=30).stdout.strip()
    assert run("PING") == "PONG"
    assert run("SET", "cli-key", "hello world") == "OK"
    assert run("GET", "cli-key") == "hello world"
    assert run("EXISTS", "cli-key", "cli-key", "no") == "2"
    assert "unknown command" in run("LPUSH", "l", "x")
    assert run("-3", "GET", "cli-key") == "hello world"
    # A pipe of many commands in one go (redis-cli --pipe speaks raw RESP).
    cmds = "".join(f"*3\r\n$3\r\nSET\r\n$6\r\npipe{i:02d}\r\n$1\r\n{i % 10}\r\n" for i in range(50))
    p = subprocess.run(cli + ["--pipe"], input=cmds, capture_output=True, text=True, timeout=30)
    assert "errors: 0, replies: 50" in p.stdout
    assert run("GET", "pipe42") == "2"


def test_redis_benchmark(kv):
    p = subprocess.run(
        ["redis-benchmark", "-h", kv.host, "-p", str(kv.kv_port), "-a", KV_PASSWORD, "-t", "set,get,mset",
         "-n", "5000", "-c", "8", "-P", "4", "-d", "1024", "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    for t in ("SET: ", "GET: ", "MSET (10 keys): "):
        assert t in p.stdout, p.stdout
    assert kv.redis().ping()


def test_lmcache_redis_connector_sequence(kv):
    """What LMCache's `redis://` connector (RedisConnector) sends: put = SET <key>kv_bytes then SET
    <key>metadata; contains = EXISTS <key>metadata; get = GET <key>metadata, GET <key>kv_bytes, and
    DEL <key>metadata when the kv_bytes half is gone (a torn pair). Replayed with redis-py, which the
    connector itself uses (lmcache's package pulls in torch and CUDA libraries)."""
    # The connector builds its client exactly so, from the configured URL.
    pool = redis.ConnectionPool.from_url(f"redis://:{KV_PASSWORD}@{kv.host}:{kv.kv_port}", max_connections=150)
    r = redis.Redis.from_pool(pool)
    key = "meta-llama/Llama-3.1-8B@1@0@9f3c2a61d7b0e4f5a6c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0@bfloat16"
    kv_bytes = payload(8 * MIB, seed=11)
    metadata = payload(28, seed=12)
    assert not r.exists(key + "metadata")
    r.set(key + "kv_bytes", kv_bytes)
    r.set(key + "metadata", metadata)
    assert r.exists(key + "metadata") == 1
    assert r.get(key + "metadata") == metadata
    assert r.get(key + "kv_bytes") == kv_bytes
    # Torn pair: metadata without kv_bytes; the connector deletes the metadata.
    torn = key.replace("@0@", "@1@")
    r.set(torn + "metadata", metadata)
    assert r.exists(torn + "metadata") == 1
    assert r.get(torn + "metadata") == metadata
    assert r.get(torn + "kv_bytes") is None
    assert r.delete(torn + "metadata") == 1
    assert r.exists(torn + "metadata") == 0


def test_lmcache_resp_connector_sequence(make_node, tmp_path):
    """What LMCache's `resp://` connector (native RESPClient) sends on each worker connection: AUTH
    [user] password, then pipelined batches of SET, GET, EXISTS (one key each, the caller counts the
    leading run of hits), multi-key EXISTS and MGET, and DEL."""
    n = make_node(LocalOrigin(tmp_path / "o").toml(), kv_extra='users = [{ user = "lm", password = "lm-pw" }]')
    r = n.redis(username="lm", password="lm-pw")
    keys = [f"model@1@0@{i:064x}@bfloat16" for i in range(16)]
    values = [payload(2 * MIB, seed=i) for i in range(16)]
    pipe = r.pipeline(transaction=False)
    for k, v in zip(keys[:10], values[:10]):
        pipe.set(k, v)
    assert pipe.execute() == [True] * 10
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.exists(k)
    hits = pipe.execute()
    assert hits == [1] * 10 + [0] * 6
    leading = next((i for i, h in enumerate(hits) if not h), len(hits))
    assert leading == 10
    assert r.exists(*keys) == 10
    got = r.mget(keys)
    assert got[:10] == values[:10] and got[10:] == [None] * 6
    pipe = r.pipeline(transaction=False)
    for k in keys[:10]:
        pipe.get(k)
    assert pipe.execute() == values[:10]
    assert r.delete(keys[0]) == 1
    assert r.get(keys[0]) is None
    assert n.metric("cairn_kv_lease_pins_total") >= 10


def test_large_value_and_exact_bytes(kv):
    r = kv.redis()
    big = payload(100 * MIB, seed=5)
    assert r.set("big", big)
    assert r.get("big") == big
    assert r.strlen("big") == len(big)


def test_malformed_input_and_limits(kv):
    auth = auth_cmd()
    # Malformed framing: an error, then the connection is closed; the node is fine.
    out = raw(kv, auth + b"*2\r\n$3\r\nGET\r\n:5\r\n", read_until_close=True)
    assert out.startswith(b"+OK\r\n-ERR Protocol error")
    out = raw(kv, auth + b"*1\r\n$abc\r\n", read_until_close=True)
    assert b"-ERR Protocol error" in out
    # A bulk length over the value limit (160 MiB in these tests) is refused before any allocation.
    out = raw(kv, auth + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999999\r\n", read_until_close=True)
    assert b"invalid bulk length" in out
    # Too many arguments.
    out = raw(kv, auth + b"*99999999\r\n", read_until_close=True)
    assert b"invalid multibulk length" in out
    # An over-long inline command.
    out = raw(kv, auth + b"GET " + b"x" * (100 << 10), read_until_close=True)
    assert b"too big inline request" in out
    # An over-long key is refused, and the connection stays usable.
    r = kv.redis()
    with pytest.raises(redis.ResponseError, match="over the limit"):
        r.get("k" * 20000)
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("XADD", "s", "*", "a", "b")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "a", "b", "NX", "XX")
    assert r.ping() and r.set("still", "ok") and r.get("still") == b"ok"
    # Inline commands, pipelined with RESP ones.
    out = raw(kv, auth + b"PING\r\nECHO hello\r\n*1\r\n$4\r\nPING\r\n", read_until_close=False)
    assert out.startswith(b"+OK\r\n")
    assert kv.metric('cairn_kv_refused_total{reason="protocol"}') >= 4


def test_disconnect_mid_value_leaves_nothing(kv):
    r = kv.redis()
    r.set("half", "old")
    size = 100 * MIB
    header = f"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n${size}\r\n".encode()
    s = socket.create_connection((kv.host, kv.kv_port))
    s.sendall(auth_cmd() + header)
    chunk = payload(MIB, seed=3)
    for _ in range(60):
        s.sendall(chunk)
    s.close()
    time.sleep(0.5)
    assert r.get("half") == b"old"
    # A fresh key cut short never appears either.
    s = socket.create_connection((kv.host, kv.kv_port))
    s.sendall(auth_cmd() + header.replace(b"half", b"newk") + chunk * 10)
    s.shutdown(socket.SHUT_WR)
    s.close()
    time.sleep(0.3)
    assert r.exists("newk") == 0
    assert r.ping()


def test_eviction_spills_to_disk_and_leases_hold(make_node, tmp_path):
    n = make_node(LocalOrigin(tmp_path / "o").toml(), kv_ram="48MiB", kv_disk="512MiB", kv_max_value="16MiB")
    r = n.redis()
    values = {f"blk{i}": payload(4 * MIB, seed=100 + i) for i in range(24)}  # 96 MiB: twice the RAM tier
    for k, v in values.items():
        r.set(k, v)
        time.sleep(0.02)
    time.sleep(0.5)
    hits = 0
    for k, v in values.items():
        got = r.get(k)
        assert got is None or got == v, k
        hits += got is not None
    assert hits >= 20
    assert n.metric('cairn_kv_hits_total{tier="disk"}') > 0
    assert n.metric("cairn_kv_spilled_total") > 0
    # A key found by EXISTS is still readable after enough writes to evict it.
    no_disk = make_node(LocalOrigin(tmp_path / "o2").toml(), kv_ram="32MiB", kv_disk="0", kv_max_value="8MiB",
                        kv_extra='lease = "10s"')
    r2 = no_disk.redis()
    r2.set("leased", payload(2 * MIB, seed=1))
    assert r2.exists("leased") == 1
    for i in range(20):
        r2.set(f"filler{i}", payload(2 * MIB, seed=i))
    assert r2.get("leased") == payload(2 * MIB, seed=1)
    assert r2.get("filler0") is None  # evicted, not leased
    assert no_disk.metric("cairn_kv_lease_pins_total") >= 1


def test_metrics(kv):
    r = kv.redis()
    r.set("m", "v")
    r.get("m")
    r.get("none")
    m = kv.metrics()
    assert m['cairn_kv_hits_total{tier="ram"}'] >= 1
    assert m["cairn_kv_misses_total"] >= 1
    assert m['cairn_kv_command_duration_seconds_count{cmd="get"}'] >= 2
    assert m['cairn_kv_network_bytes_total{dir="in"}'] > 0


@pytest.fixture
def kv_cluster(tmp_path):
    c = Cluster(tmp_path, 3)
    yield c
    c.stop()


def test_cluster_spreads_keys_and_survives_an_owner_kill(kv_cluster):
    c = kv_cluster
    clients = [n.redis() for n in c.nodes]
    keys = [f"model@1@0@{i:064x}@bfloat16kv_bytes" for i in range(120)]
    values = {k: payload(64 << 10, seed=i) for i, k in enumerate(keys)}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv_: clients[hash(kv_[0]) % 3].set(*kv_), values.items()))
    sizes = [r.dbsize() for r in clients]
    assert sum(sizes) == len(keys) and all(s > 10 for s in sizes), sizes
    # Any node answers for any key, with the owner's bytes.
    for r in clients:
        assert r.get(keys[7]) == values[keys[7]]
    # A 128-key existence check spanning every owner counts right, missing keys included.
    probe = keys[:100] + [f"absent{i}" for i in range(28)]
    assert clients[0].exists(*probe) == 100
    assert clients[2].mget(probe[95:105]) == [values[k] for k in keys[95:100]] + [None] * 5
    assert clients[1].delete(keys[0], keys[1], "absent") == 2
    # kill -9 one owner: its keys become misses, never errors or wrong bytes.
    dead = c.nodes[2]
    dead_keys = sizes[2]
    dead.stop(signal.SIGKILL)
    survivors = clients[:2]
    for r in survivors:
        got = r.mget(keys[2:])
        hits = 0
        for k, v in zip(keys[2:], got):
            assert v is None or v == values[k]
            hits += v is not None
        assert len(keys) - 2 - dead_keys <= hits < len(keys) - 2
        assert r.exists(*keys[2:]) == hits
        for k in keys[2:20]:
            got = r.get(k)
            assert got is None or got == values[k]
    # Writes for the dead owner's keys go to the next node of their ranking and are readable.
    for k in keys[2:30]:
        assert survivors[0].set(k, b"again")
        assert survivors[1].get(k) == b"again"


def test_cluster_replicas_keep_keys_through_an_owner_kill(kv_cluster):
    c = kv_cluster
    for n in c.nodes:
        n.config_path.write_text(n.config_path.read_text().replace("[kv]\n", "[kv]\nreplicas = 2\n", 1))
        n.restart()
    clients = [n.redis() for n in c.nodes]
    values = {f"rep-{i:03d}": payload(32 << 10, seed=500 + i) for i in range(40)}
    for k, v in values.items():
        assert clients[0].set(k, v)
    # Every key is held by two nodes.
    assert sum(r.dbsize() for r in clients) == 2 * len(values)
    c.nodes[1].stop(signal.SIGKILL)
    for r in (clients[0], clients[2]):
        assert r.mget(list(values)) == list(values.values())
        assert r.exists(*values) == len(values)
