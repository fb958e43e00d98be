"""Disk space: the disk tier keeps a reserve of its device free whatever `disk_capacity` says, gives
space back at a restart, and gives way to checkpoint writes (write-back journal, staged multipart
parts); when the journal alone fills the disk, writes answer 507 and leave nothing half-written.
Each test runs its node's cache dir on a tmpfs of its own."""

import os
import subprocess
import threading
import time

import botocore.exceptions
import pytest

from conftest import AzuriteOrigin, LocalOrigin, payload
from test_cluster import Cluster
from test_writeback import azurite, blob, sync, wait_clean, with_durability  # noqa: F401 (azurite is a fixture)

MIB = 1024 * 1024
# Bytes per object read to fill the cache; objects total more than the tmpfs.
OBJECT = 4 * MIB
# Each disk-tier chunk file starts with a header block (crates/cairn-store/src/disk.rs).
CHUNK_FILE_HEADER = 4096


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts tmpfs file systems of a given size (the suite runs as root); unmounts them after."""
    mounts = []

    def mount(size_mib):
        mnt = tmp_path / f"tmpfs{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (the suite runs as root): {r.stderr.decode()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)])


def free_bytes(mnt):
    s = os.statvfs(mnt)
    return s.f_bavail * s.f_frsize


def total_bytes(mnt):
    s = os.statvfs(mnt)
    return s.f_blocks * s.f_frsize


def node_on(make_node, mnt, origin_toml, env=None, cache="", sections=""):
    """A node whose cache dir (disk tier, journal, staged parts) is on `mnt`, with `disk_capacity`
    (1 GiB) far above the tmpfs's size and extra `[cache]` lines."""
    node = make_node(origin_toml, env=env, sections=sections)
    node.stop()
    text = node.config_path.read_text().replace(str(node.cache_dir), str(mnt / "cache"))
    assert 'disk_capacity = "1GiB"' in text
    text = text.replace("readahead_chunks = 4\n", f"readahead_chunks = 4\n{cache}\n")
    node.config_path.write_text(text)
    node.cache_dir = mnt / "cache"
    node.start()
    return node


def disk_bytes(node):
    return node.metric('cairn_cache_bytes{tier="disk"}')


def settle(node, timeout=30):
    """Waits until the disk tier stops changing (its background writes are done)."""
    last, stable_since = None, time.time()
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = disk_bytes(node)
        if now != last:
            last, stable_since = now, time.time()
        elif time.time() - stable_since > 0.6:
            return now
        time.sleep(0.1)
    return last


def fill_cache(node, origin, mnt, prefix, count):
    """Reads `count` objects of OBJECT bytes through the node (more than the tmpfs holds) while
    watching the tmpfs's free space; returns the least free seen."""
    for i in range(count):
        origin.put_direct(f"{prefix}fill-{i}", payload(OBJECT, seed=1000 + i))
    least = [free_bytes(mnt)]
    done = threading.Event()

    def watch():
        while not done.is_set():
            least[0] = min(least[0], free_bytes(mnt))
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    try:
        s3 = node.s3()
        for i in range(count):
            got = s3.get_object(Bucket="data", Key=f"{prefix}fill-{i}")["Body"].read()
            assert got == payload(OBJECT, seed=1000 + i)
        settle(node)
    finally:
        done.set()
        t.join()
    return min(least[0], free_bytes(mnt))


def part_files(node):
    return sorted(p.relative_to(node.cache_dir) for p in (node.cache_dir / "uploads").glob("*/*") if p.name != "target")


def test_cache_gives_way_to_checkpoint_writes(make_node, azurite, tmpfs, prefix):
    mnt = tmpfs(64)
    origin = AzuriteOrigin(azurite.port)
    node = node_on(make_node, mnt, origin.toml(), env=origin.env,
                   sections='[writeback]\nretry_min = "100ms"\nretry_max = "300ms"\n')
    fill_cache(node, origin, mnt, prefix, 24)
    reserve = 0.1 * total_bytes(mnt)
    # The tier filled the device down to its reserve (default 10%), whatever disk_capacity says.
    free_before = free_bytes(mnt)
    assert free_before < reserve + 2 * MIB, f"{free_before} bytes free: the cache did not fill the disk"
    assert node.metric('cairn_disk_free_bytes{kind="reserve"}') == pytest.approx(reserve, abs=4096)
    filled = disk_bytes(node)
    assert filled > 40 * MIB

    # The origin goes away, so the journal and the staged part must all fit on the device at once.
    azurite.stop()
    s3 = with_durability(node.s3(), "local")
    ckpt = payload(20 * MIB + 5, seed=1)
    r = s3.put_object(Bucket="data", Key=prefix + "ckpt.bin", Body=ckpt)
    assert r["ETag"].strip('"').startswith("cairn-w-")
    assert s3.get_object(Bucket="data", Key=prefix + "ckpt.bin")["Body"].read() == ckpt

    part = payload(8 * MIB, seed=2)
    key = prefix + "multi.bin"
    up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    etag = s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=1, Body=part)["ETag"]
    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == part
    assert node.metric("cairn_dirty_bytes") == len(ckpt) + len(part)

    # Clean chunks gave way: the tier shrank by what the journal needed beyond the free space.
    assert node.metric("cairn_disk_evictions_for_writes_total") > 0
    shrunk = filled - disk_bytes(node)
    assert shrunk >= len(ckpt) + len(part) - free_before, f"the tier shrank by {shrunk} bytes only"
    assert node.metric('cairn_s3_errors_total{op="PutObject",code="InsufficientStorage"}') == 0

    azurite.start()
    code, answer = sync(node, prefix, timeout="60s")
    assert code == 200, answer
    assert blob(origin, prefix + "ckpt.bin") == ckpt
    assert blob(origin, key) == part
    assert not any(wait_clean([node]).values())


def test_disk_tier_keeps_the_reserve_free_while_filling(make_node, tmp_path, tmpfs, prefix):
    mnt = tmpfs(48)
    origin = LocalOrigin(tmp_path / "origin")
    node = node_on(make_node, mnt, origin.toml(), cache='free_space_reserve = "12MiB"')
    least = fill_cache(node, origin, mnt, prefix, 16)
    assert least >= 12 * MIB, f"the tier left only {least} bytes free while filling (reserve 12 MiB)"
    # It filled up to the reserve, not short of it, and evicted its own chunks to stay there.
    assert free_bytes(mnt) < 12 * MIB + 2 * MIB
    assert node.metric('cairn_evictions_total{tier="disk"}') > 0
    # What it kept is served from disk after a restart (which, above the reserve, evicts nothing).
    kept = disk_bytes(node)
    node.restart()
    assert disk_bytes(node) == kept
    s3 = node.s3()
    assert s3.get_object(Bucket="data", Key=f"{prefix}fill-15")["Body"].read() == payload(OBJECT, seed=1015)
    assert node.metric('cairn_chunk_hits_total{tier="disk"}') > 0


def test_restart_below_the_reserve_gives_space_back(make_node, tmp_path, tmpfs, prefix):
    mnt = tmpfs(48)
    origin = LocalOrigin(tmp_path / "origin")
    node = node_on(make_node, mnt, origin.toml())
    fill_cache(node, origin, mnt, prefix, 16)
    reserve = 0.1 * total_bytes(mnt)
    node.stop()
    before = sum(p.stat().st_size for p in node.chunk_files())
    # Someone else took the device down to 1 MiB free while the node was down.
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * int(free_bytes(mnt) - MIB))
    assert free_bytes(mnt) < reserve
    node.start()
    assert free_bytes(mnt) >= reserve, f"{free_bytes(mnt)} bytes free after the restart, reserve {reserve}"
    files = node.chunk_files()
    after = sum(p.stat().st_size for p in files)
    assert before - after >= reserve - 2 * MIB
    # It gave back what the reserve lacked, not the whole cache.
    assert after > before / 2
    assert disk_bytes(node) == after - CHUNK_FILE_HEADER * len(files)
    s3 = node.s3()
    for i in (0, 15):
        assert s3.get_object(Bucket="data", Key=f"{prefix}fill-{i}")["Body"].read() == payload(OBJECT, seed=1000 + i)


def leftovers(node):
    """Files in the journal and the staging area that no committed write or staged part owns."""
    bad = []
    for d in (node.cache_dir / "writeback").iterdir():
        if not (d / "record.json").is_file():
            bad.append(str(d))
        bad += [str(p) for p in d.glob("*.tmp")]
    bad += [str(p) for p in (node.cache_dir / "uploads").glob("*/*.tmp")]
    return bad


def test_full_journal_answers_507_and_leaves_nothing_half_written(make_node, azurite, tmpfs, prefix):
    mnt = tmpfs(32)
    origin = AzuriteOrigin(azurite.port)
    node = node_on(make_node, mnt, origin.toml(), env=origin.env,
                   sections='[writeback]\nretry_min = "100ms"\nretry_max = "300ms"\n')
    azurite.stop()
    s3 = with_durability(node.s3(), "local")
    kept, error = [], None
    for i in range(12):
        b = payload(OBJECT + 1000 * i, seed=200 + i)
        try:
            s3.put_object(Bucket="data", Key=f"{prefix}o{i}", Body=b)
            kept.append((f"{prefix}o{i}", b))
        except botocore.exceptions.ClientError as e:
            error = e
            break
    assert error is not None, "32 MiB of disk took 48 MiB of objects"
    assert error.response["Error"]["Code"] == "InsufficientStorage"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 507
    assert len(kept) >= 5
    assert node.metric("cairn_dirty_bytes") == sum(len(b) for _, b in kept)
    assert len(list((node.cache_dir / "writeback").iterdir())) == len(kept)
    assert leftovers(node) == []

    key = prefix + "multi.bin"
    up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=1, Body=payload(8 * MIB, seed=3))
    assert e.value.response["Error"]["Code"] == "InsufficientStorage"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 507
    assert part_files(node) == []
    assert leftovers(node) == []
    assert node.metric("cairn_dirty_bytes") == sum(len(b) for _, b in kept)

    for k, b in kept:
        assert s3.get_object(Bucket="data", Key=k)["Body"].read() == b
    assert node.alive()

    azurite.start()
    code, answer = sync(node, prefix, timeout="60s")
    assert code == 200, answer
    for k, b in kept:
        assert blob(origin, k) == b
    assert not any(wait_clean([node]).values())
    # With the journal drained the node takes writes again: a PutObject and the multipart upload
    # that was refused (its upload id still valid).
    again = payload(OBJECT, seed=4)
    s3.put_object(Bucket="data", Key=prefix + "again", Body=again)
    part = payload(8 * MIB, seed=3)
    etag = s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=1, Body=part)["ETag"]
    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == part
    code, answer = sync(node, prefix, timeout="60s")
    assert code == 200, answer
    assert blob(origin, prefix + "again") == again
    assert blob(origin, key) == part


def fill_to(mnt, leave):
    """Fills the device with a file nobody can evict until at most `leave` bytes are free (or the
    file system refuses more); returns the file."""
    filler = mnt / "filler"
    block = b"\0" * (64 * 1024)
    with open(filler, "wb") as f:
        try:
            while free_bytes(mnt) > leave:
                f.write(block[:max(4096, min(len(block), free_bytes(mnt) - leave))])
                f.flush()
        except OSError:
            pass
    assert free_bytes(mnt) <= leave + 64 * 1024
    return filler


def refused_507(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 507, e.value.response
    assert e.value.response["Error"]["Code"] == "InsufficientStorage", e.value.response


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return None


def journal_folders(node):
    d = node.cache_dir / "writeback"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_complete_multipart_on_a_full_disk_answers_507_and_keeps_the_upload(make_node, tmp_path, tmpfs, prefix):
    mnt = tmpfs(32)
    origin = LocalOrigin(tmp_path / "origin")
    node = node_on(make_node, mnt, origin.toml())
    s3 = with_durability(node.s3(), "local")
    key = prefix + "multi.bin"
    parts = [payload(5 * MIB, seed=30), payload(2 * MIB + 3, seed=31)]
    up = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    etags = [s3.upload_part(Bucket="data", Key=key, UploadId=up, PartNumber=i + 1, Body=b)["ETag"]
             for i, b in enumerate(parts)]
    listing = {"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]}
    staged = part_files(node)
    assert len(staged) == 2
    filler = fill_to(mnt, 0)
    refused_507(lambda: s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload=listing))
    # The upload is as it was: its parts staged and listed, no journal entry, no object.
    assert part_files(node) == staged
    listed = s3.list_parts(Bucket="data", Key=key, UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == \
        [(i + 1, e, len(b)) for i, (e, b) in enumerate(zip(etags, parts))]
    assert journal_folders(node) == [] and leftovers(node) == []
    assert node.metric("cairn_dirty_bytes") == 0
    assert error_code(lambda: s3.head_object(Bucket="data", Key=key)) == "404"
    assert not (origin.root / key).exists()
    # Space comes back: the same completion succeeds with exactly the parts' bytes.
    filler.unlink()
    r = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=up, MultipartUpload=listing)
    assert r["ETag"].strip('"').startswith("cairn-w-")
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == b"".join(parts)
    code, answer = sync(node, prefix, timeout="60s")
    assert code == 200, answer
    assert (origin.root / key).read_bytes() == b"".join(parts)


def test_copy_onto_a_full_disk_answers_507_and_writes_nothing(make_node, tmp_path, tmpfs, prefix):
    mnt = tmpfs(32)
    origin = LocalOrigin(tmp_path / "origin")
    node = node_on(make_node, mnt, origin.toml())
    s3 = with_durability(node.s3(), "local")
    src, dst = prefix + "src.bin", prefix + "dst.bin"
    body = payload(6 * MIB + 11, seed=40)
    origin.put_direct(src, body)
    # Less than the copy needs, and below the tier's reserve (so no cache chunk is there to evict).
    filler = fill_to(mnt, 2 * MIB)
    free = free_bytes(mnt)
    refused_507(lambda: s3.copy_object(Bucket="data", Key=dst, CopySource={"Bucket": "data", "Key": src}))
    assert error_code(lambda: s3.head_object(Bucket="data", Key=dst)) == "404"
    assert s3.get_object(Bucket="data", Key=src)["Body"].read() == body
    assert journal_folders(node) == [] and leftovers(node) == []
    assert node.metric("cairn_dirty_bytes") == 0
    assert free_bytes(mnt) >= free - 64 * 1024, "the refused copy still holds disk space"
    code, answer = sync(node, prefix, timeout="10s")
    assert code == 200, answer
    assert not (origin.root / dst).exists()
    assert (origin.root / src).read_bytes() == body
    filler.unlink()
    s3.copy_object(Bucket="data", Key=dst, CopySource={"Bucket": "data", "Key": src})
    assert s3.get_object(Bucket="data", Key=dst)["Body"].read() == body
    code, answer = sync(node, prefix, timeout="60s")
    assert code == 200, answer
    assert (origin.root / dst).read_bytes() == body


def test_replicated_write_to_a_holder_with_a_full_disk_answers_507_and_leaves_nothing(tmp_path, tmpfs, prefix):
    """Two nodes: the writer's replica can only go to the other, whose disk is full part-way
    through the object. SEMANTICS: a full disk fails the write with 507, a replica push between
    nodes included, and removes what it had written."""
    mnt = tmpfs(32)
    c = Cluster(tmp_path, 2, chunk=MIB, more_sections='[writeback]\nreplicas = 2\nretry_min = "100ms"\n'
                'retry_max = "500ms"\nupload_defer = "0s"\n')
    try:
        holder = c.nodes[1]
        holder.stop()
        holder.config_path.write_text(holder.config_path.read_text().replace(str(holder.cache_dir), str(mnt / "cache")))
        holder.cache_dir = mnt / "cache"
        holder.start()
        # Room for two of the object's six chunks.
        filler = fill_to(mnt, 2 * MIB + 512 * 1024)
        free = free_bytes(mnt)
        key = prefix + "shard.bin"
        body = payload(6 * MIB - 100, seed=50)
        s3 = with_durability(c.nodes[0].s3(), "replicated")
        refused_507(lambda: s3.put_object(Bucket="data", Key=key, Body=body))
        for n in c.nodes:
            assert error_code(lambda: n.s3().head_object(Bucket="data", Key=key)) == "404"
            assert journal_folders(n) == [], (n.endpoint, journal_folders(n))
            assert n.metric("cairn_dirty_bytes") == 0
            assert n.metric("cairn_replicas_held") == 0
        assert free_bytes(mnt) >= free - 64 * 1024, "the refused write still holds the holder's disk"
        for n in c.nodes:
            code, answer = sync(n, prefix, timeout="10s")
            assert code == 200, answer
        assert not (c.origin.root / key).exists()
        # With room again the same write is taken, replicated and uploaded.
        filler.unlink()
        s3.put_object(Bucket="data", Key=key, Body=body)
        for n in c.nodes:
            assert n.s3().get_object(Bucket="data", Key=key)["Body"].read() == body
        for n in c.nodes:
            code, answer = sync(n, prefix, timeout="60s")
            assert code == 200, answer
        assert (c.origin.root / key).read_bytes() == body
    finally:
        c.stop()
