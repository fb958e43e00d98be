"""Real S3 clients against a node: boto3 (managed multipart transfers, ranged reads across chunk
boundaries, listings with delimiters and pagination, awkward keys, batch deletes), the AWS CLI
(multipart `s3 cp`, `s3 ls`, ranged `s3api get-object`, `s3 rm`, and `s3 mb`/`s3 rb` against an
account-mode node), rclone (`copyto`, ranged `cat`, `lsf`, `deletefile`) and cairn's own CLI
(`put`, `stat`, `ls`, `get`). Every transfer is compared byte for byte."""

import hashlib
import os
import subprocess

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from conftest import ACCESS_KEY, CAIRN_BIN, CHUNK, SECRET_KEY, LocalOrigin, payload

MiB = 1 << 20


def s3_code(exc):
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def run(cmd, env=None, check=True, timeout=120):
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout: {p.stdout[-2000:]!r}\nstderr: {p.stderr[-2000:]!r}")
    return p


def list_all(c, **kw):
    """Every page of a list_objects_v2 call, in order."""
    pages = []
    token = None
    while True:
        args = dict(kw, ContinuationToken=token) if token else dict(kw)
        page = c.list_objects_v2(**args)
        pages.append(page)
        if not page["IsTruncated"]:
            return pages
        token = page["NextContinuationToken"]


def keys_of(page):
    return [o["Key"] for o in page.get("Contents", [])]


def prefixes_of(page):
    return [p["Prefix"] for p in page.get("CommonPrefixes", [])]


# ---------------------------------------------------------------------------------------------
# boto3


@pytest.mark.writes
def test_boto3_managed_multipart_transfer(node, prefix, tmp_path):
    data = payload(12 * MiB, seed=1)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    c = node.s3()
    key = prefix + "twelve.bin"
    c.upload_file(str(src), "data", key, Config=cfg)
    head = c.head_object(Bucket="data", Key=key)
    assert head["ContentLength"] == 12 * MiB
    c.download_file("data", key, str(dst), Config=cfg)
    assert dst.read_bytes() == data


@pytest.mark.writes
def test_boto3_ranged_reads_at_chunk_boundaries(node, prefix):
    size = 3 * CHUNK + 1234
    data = payload(size, seed=2)
    c = node.s3()
    key = prefix + "ranged.bin"
    c.put_object(Bucket="data", Key=key, Body=data)
    cases = [
        (0, 0),
        (0, CHUNK - 1),
        (CHUNK - 1, CHUNK),
        (CHUNK, 2 * CHUNK - 1),
        (CHUNK - 10, 2 * CHUNK + 10),
        (2 * CHUNK - 1, 3 * CHUNK),
        (3 * CHUNK, size - 1),
        (0, size - 1),
        (size - 1, size - 1),
        (size - 5, size + 1000),  # past the end: clipped
    ]
    for first, last in cases:
        r = c.get_object(Bucket="data", Key=key, Range=f"bytes={first}-{last}")
        want = data[first : last + 1]
        assert r["Body"].read() == want, (first, last)
        assert r["ContentLength"] == len(want)
        assert r["ContentRange"] == f"bytes {first}-{first + len(want) - 1}/{size}"
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    for spec, want, start in [
        ("bytes=-100", data[-100:], size - 100),
        (f"bytes=-{CHUNK + 1}", data[-(CHUNK + 1) :], size - CHUNK - 1),
        (f"bytes=-{size + 50}", data, 0),
        (f"bytes={2 * CHUNK}-", data[2 * CHUNK :], 2 * CHUNK),
        (f"bytes={CHUNK - 1}-", data[CHUNK - 1 :], CHUNK - 1),
        (f"bytes={size - 1}-", data[-1:], size - 1),
    ]:
        r = c.get_object(Bucket="data", Key=key, Range=spec)
        assert r["Body"].read() == want, spec
        assert r["ContentRange"] == f"bytes {start}-{size - 1}/{size}", spec
    assert c.get_object(Bucket="data", Key=key)["Body"].read() == data


@pytest.mark.writes
def test_boto3_list_with_delimiter_and_pagination(node, prefix):
    c = node.s3()
    names = ["a.txt", "b.txt", "c.txt", "dir1/x", "dir1/y", "dir1/sub/z", "dir2/z", "e.txt"]
    for i, n in enumerate(names):
        c.put_object(Bucket="data", Key=prefix + n, Body=f"object {i}".encode())

    page = c.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/")
    assert keys_of(page) == [prefix + n for n in ("a.txt", "b.txt", "c.txt", "e.txt")]
    assert prefixes_of(page) == [prefix + "dir1/", prefix + "dir2/"]
    assert page["KeyCount"] == 6 and page["IsTruncated"] is False

    pages = list_all(c, Bucket="data", Prefix=prefix, Delimiter="/", MaxKeys=2)
    assert [(keys_of(p), prefixes_of(p)) for p in pages] == [
        ([prefix + "a.txt", prefix + "b.txt"], []),
        ([prefix + "c.txt"], [prefix + "dir1/"]),
        ([prefix + "e.txt"], [prefix + "dir2/"]),
    ]
    assert [p["KeyCount"] for p in pages] == [2, 2, 2]
    assert [p["IsTruncated"] for p in pages] == [True, True, False]

    page = c.list_objects_v2(Bucket="data", Prefix=prefix + "dir1/", Delimiter="/")
    assert keys_of(page) == [prefix + "dir1/x", prefix + "dir1/y"]
    assert prefixes_of(page) == [prefix + "dir1/sub/"]

    pages = list_all(c, Bucket="data", Prefix=prefix, MaxKeys=3)
    assert [keys_of(p) for p in pages] == [
        [prefix + n for n in ("a.txt", "b.txt", "c.txt")],
        [prefix + n for n in ("dir1/sub/z", "dir1/x", "dir1/y")],
        [prefix + n for n in ("dir2/z", "e.txt")],
    ]
    # Any string is a delimiter, not just '/'.
    page = c.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter=".")
    assert keys_of(page) == [prefix + n for n in ("dir1/sub/z", "dir1/x", "dir1/y", "dir2/z")]
    assert prefixes_of(page) == [prefix + n for n in ("a.", "b.", "c.", "e.")]
    # A string prefix that is not a whole path segment.
    page = c.list_objects_v2(Bucket="data", Prefix=prefix + "di")
    assert keys_of(page) == [prefix + n for n in ("dir1/sub/z", "dir1/x", "dir1/y", "dir2/z")]
    sizes = {o["Key"]: o["Size"] for o in c.list_objects_v2(Bucket="data", Prefix=prefix)["Contents"]}
    assert sizes == {prefix + n: len(f"object {i}") for i, n in enumerate(names)}


@pytest.mark.writes
def test_boto3_awkward_keys_round_trip(node, prefix):
    c = node.s3()
    names = ["with space.txt", "plus+sign", "per%cent", "ünïcødé/日本語.bin", "tilde~and=eq&amp", "semi;colon,comma"]
    for i, n in enumerate(names):
        c.put_object(Bucket="data", Key=prefix + n, Body=payload(100 + i, seed=i))
    page = c.list_objects_v2(Bucket="data", Prefix=prefix)  # boto3 asks for encoding-type=url
    assert keys_of(page) == sorted(prefix + n for n in names)
    page = c.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/")
    assert prefixes_of(page) == [prefix + "ünïcødé/"]
    page = c.list_objects_v2(Bucket="data", Prefix=prefix + "ünïcødé/")
    assert keys_of(page) == [prefix + "ünïcødé/日本語.bin"]
    for i, n in enumerate(names):
        assert c.get_object(Bucket="data", Key=prefix + n)["Body"].read() == payload(100 + i, seed=i), n
        assert c.head_object(Bucket="data", Key=prefix + n)["ContentLength"] == 100 + i


@pytest.mark.writes
def test_boto3_delete_objects(node, prefix):
    c = node.s3()
    names = ["one", "two", "three", "keep", "sub/four"]
    for n in names:
        c.put_object(Bucket="data", Key=prefix + n, Body=n.encode())
    gone = ["one", "two", "three", "sub/four"]
    r = c.delete_objects(Bucket="data", Delete={"Objects": [{"Key": prefix + n} for n in gone]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(prefix + n for n in gone)
    assert r.get("Errors", []) == []
    assert keys_of(c.list_objects_v2(Bucket="data", Prefix=prefix)) == [prefix + "keep"]
    for n in gone:
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket="data", Key=prefix + n)
        assert s3_code(e) == ("NoSuchKey", 404)
    assert c.get_object(Bucket="data", Key=prefix + "keep")["Body"].read() == b"keep"


# ---------------------------------------------------------------------------------------------
# AWS CLI (local folder origin: each invocation starts a Python interpreter)


def aws_env(tmp_path):
    return dict(
        os.environ,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )


def aws(node, env, *args, check=True):
    # `--only-show-errors` only exists for the transfer commands (cp, mv, rm, sync).
    if args[:2] in (("s3", "cp"), ("s3", "rm")):
        args = (*args, "--only-show-errors")
    return run(["aws", "--endpoint-url", node.endpoint, *args], env=env, check=check)


def test_aws_cli_objects(make_node, tmp_path):
    node = make_node(LocalOrigin(tmp_path / "o").toml())
    env = aws_env(tmp_path)
    data = payload(20 * MiB, seed=3)
    src, dst, part = tmp_path / "src.bin", tmp_path / "dst.bin", tmp_path / "part.bin"
    src.write_bytes(data)

    aws(node, env, "s3", "cp", str(src), "s3://data/cli/big.bin")
    assert (tmp_path / "o" / "cli" / "big.bin").read_bytes() == data
    aws(node, env, "s3", "cp", "s3://data/cli/big.bin", str(dst))
    assert sha256(dst.read_bytes()) == sha256(data)

    out = aws(node, env, "s3", "ls", "s3://data/cli/").stdout.decode()
    assert out.splitlines()[0].split()[2:] == [str(20 * MiB), "big.bin"], out
    assert len(out.splitlines()) == 1, out

    aws(node, env, "s3api", "get-object", "--bucket", "data", "--key", "cli/big.bin", "--range", "bytes=10-19",
        str(part))
    assert part.read_bytes() == data[10:20]

    aws(node, env, "s3", "rm", "s3://data/cli/big.bin")
    assert not (tmp_path / "o" / "cli" / "big.bin").exists()
    p = aws(node, env, "s3api", "head-object", "--bucket", "data", "--key", "cli/big.bin", check=False)
    assert p.returncode != 0
    assert b"An error occurred (404) when calling the HeadObject operation: Not Found" in p.stderr, p.stderr


def test_aws_cli_buckets_in_account_mode(make_node, tmp_path):
    root = tmp_path / "account"
    (root / "existing").mkdir(parents=True)
    (root / "existing" / "file.txt").write_bytes(b"hello")
    node = make_node(f'url = "file://{root}"\n')
    env = aws_env(tmp_path)

    aws(node, env, "s3", "mb", "s3://fresh-bucket")
    assert (root / "fresh-bucket").is_dir()
    out = aws(node, env, "s3", "ls").stdout.decode()
    assert [line.split()[-1] for line in out.splitlines()] == ["existing", "fresh-bucket"], out

    # Creating a bucket one already owns succeeds in us-east-1 (the node's region), as in S3, and
    # leaves it as it is.
    (root / "fresh-bucket" / "kept.txt").write_bytes(b"kept")
    p = aws(node, env, "s3", "mb", "s3://fresh-bucket", check=False)
    assert p.returncode == 0, p.stderr
    assert (root / "fresh-bucket" / "kept.txt").read_bytes() == b"kept"
    (root / "fresh-bucket" / "kept.txt").unlink()

    aws(node, env, "s3", "cp", str(tmp_path / "account" / "existing" / "file.txt"), "s3://fresh-bucket/f.txt")
    assert (root / "fresh-bucket" / "f.txt").read_bytes() == b"hello"
    p = aws(node, env, "s3", "rb", "s3://fresh-bucket", check=False)
    assert p.returncode != 0
    assert b"BucketNotEmpty" in p.stderr, p.stderr
    assert (root / "fresh-bucket" / "f.txt").read_bytes() == b"hello"

    aws(node, env, "s3", "rm", "s3://fresh-bucket/f.txt")
    aws(node, env, "s3", "rb", "s3://fresh-bucket")
    assert not (root / "fresh-bucket").exists()
    out = aws(node, env, "s3", "ls").stdout.decode()
    assert [line.split()[-1] for line in out.splitlines()] == ["existing"], out
    assert sorted(p.name for p in root.iterdir()) == ["existing"]


# ---------------------------------------------------------------------------------------------
# rclone


def rclone_env(node, tmp_path):
    # rclone refuses a custom CA bundle over its HTTP transport, even for an http:// endpoint.
    base = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return dict(
        base,
        RCLONE_CONFIG=str(tmp_path / "rclone.conf"),
        RCLONE_CONFIG_CAIRN_TYPE="s3",
        RCLONE_CONFIG_CAIRN_PROVIDER="Other",
        RCLONE_CONFIG_CAIRN_ENDPOINT=node.endpoint,
        RCLONE_CONFIG_CAIRN_ACCESS_KEY_ID=ACCESS_KEY,
        RCLONE_CONFIG_CAIRN_SECRET_ACCESS_KEY=SECRET_KEY,
        RCLONE_CONFIG_CAIRN_FORCE_PATH_STYLE="true",
        RCLONE_CONFIG_CAIRN_REGION="us-east-1",
    )


@pytest.mark.writes
def test_rclone(node, prefix, tmp_path):
    env = rclone_env(node, tmp_path)
    data = payload(3 * CHUNK + 77, seed=4)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    remote = f"cairn:data/{prefix}sub/file.bin"

    run(["rclone", "copyto", str(src), remote], env=env)
    assert node.s3().get_object(Bucket="data", Key=prefix + "sub/file.bin")["Body"].read() == data

    for offset, count in [(0, 10), (CHUNK - 5, 10), (2 * CHUNK, CHUNK + 77), (len(data) - 1, 1)]:
        out = run(["rclone", "cat", remote, "--offset", str(offset), "--count", str(count)], env=env).stdout
        assert out == data[offset : offset + count], (offset, count)
    assert run(["rclone", "cat", remote], env=env).stdout == data

    assert run(["rclone", "lsf", f"cairn:data/{prefix}"], env=env).stdout == b"sub/\n"
    assert run(["rclone", "lsf", f"cairn:data/{prefix}sub"], env=env).stdout == b"file.bin\n"
    out = run(["rclone", "lsl", f"cairn:data/{prefix}sub"], env=env).stdout.decode()
    assert out.split()[0] == str(len(data)) and out.split()[-1] == "file.bin", out

    run(["rclone", "deletefile", remote], env=env)
    with pytest.raises(ClientError) as e:
        node.s3().head_object(Bucket="data", Key=prefix + "sub/file.bin")
    assert s3_code(e) == ("404", 404)
    assert run(["rclone", "lsf", f"cairn:data/{prefix}sub"], env=env).stdout == b""


# ---------------------------------------------------------------------------------------------
# cairn's own CLI


def cairn(node, *args, cwd=None):
    creds = ["--endpoint", node.endpoint, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]
    p = subprocess.run([CAIRN_BIN, *args, *creds], capture_output=True, timeout=120, cwd=cwd)
    if p.returncode != 0:
        raise AssertionError(f"cairn {args} exited {p.returncode}\nstdout: {p.stdout!r}\nstderr: {p.stderr!r}")
    return p.stdout


@pytest.mark.writes
def test_cairn_cli(node, prefix, tmp_path):
    data = payload(10 * MiB, seed=5)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    key = prefix + "cli/ten.bin"

    out = cairn(node, "put", str(src), f"s3://data/{key}")
    assert out == f"uploaded {10 * MiB} bytes to s3://data/{key}\n".encode()
    assert node.s3().get_object(Bucket="data", Key=key)["Body"].read() == data

    stat = dict(line.split(":", 1) for line in cairn(node, "stat", f"s3://data/{key}").decode().splitlines())
    assert stat["size"].strip() == str(10 * MiB)
    assert stat["key"].strip() == f"s3://data/{key}"
    assert stat["etag"].strip() == node.s3().head_object(Bucket="data", Key=key)["ETag"]

    lines = cairn(node, "ls", f"s3://data/{prefix}cli/").decode().splitlines()
    assert [line.split()[0] for line in lines] == [str(10 * MiB)]
    assert [line.split()[-1] for line in lines] == [key]
    lines = cairn(node, "ls", f"s3://data/{prefix}").decode().splitlines()
    assert [line.split() for line in lines] == [["PRE", f"{prefix}cli/"]]

    assert cairn(node, "get", f"s3://data/{key}", "-", "--range", "5-9") == data[5:10]
    across = cairn(node, "get", f"s3://data/{key}", "-", "--range", f"{CHUNK - 2}-{CHUNK + 1}")
    assert across == data[CHUNK - 2 : CHUNK + 2]
    assert cairn(node, "get", f"s3://data/{key}", str(dst)) == b""
    assert dst.read_bytes() == data
