"""The `cairn` CLI as `aws s3` users use it: buckets (mb, rb, ls), recursive copies of folder trees
in both directions, recursive deletes, and failures that say why in one line with exit status 1.
Every node here is in account mode over a local folder, as the embedded default is."""

import hashlib
import os
import pathlib
import subprocess

import pytest

from conftest import ACCESS_KEY, CAIRN_BIN, SECRET_KEY, free_port, payload

MiB = 1024 * 1024


def cli(node, *args, cwd=None, env=None, endpoint=None, shell=None):
    """Runs `cairn ARGS` against the node (through the environment, as a user would set it), or
    a shell command line in which `$CAIRN` is the binary."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    base.update(CAIRN_ACCESS_KEY=ACCESS_KEY, CAIRN_SECRET_KEY=SECRET_KEY)
    if node is not None:
        base.update(CAIRN_ENDPOINT=node.endpoint, CAIRN_ADMIN=f"http://127.0.0.1:{node.admin_port}")
    if endpoint is not None:
        base["CAIRN_ENDPOINT"] = endpoint
    base.update(env or {})
    cmd = ["bash", "-c", shell] if shell else [CAIRN_BIN, *args]
    return subprocess.run(cmd, capture_output=True, timeout=300, cwd=cwd, env=dict(base, CAIRN=CAIRN_BIN))


def ok(p):
    assert p.returncode == 0, f"exited {p.returncode}\nstdout: {p.stdout[-2000:]!r}\nstderr: {p.stderr[-2000:]!r}"
    return p.stdout.decode()


def fails_with(p, line):
    """Exit status 1, nothing on stdout, exactly this one line on stderr."""
    assert (p.returncode, p.stdout, p.stderr.decode()) == (1, b"", f"cairn: {line}\n")


@pytest.fixture
def account(make_node, tmp_path):
    """A node whose origin is a folder of buckets (account mode), and that folder."""
    root = tmp_path / "account"
    root.mkdir()
    node = make_node(f'url = "file://{root}"\n')
    node.root = root
    return node


def tree_files(root):
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(root):
    """Nested folders, an empty file, a 20 MiB file (a multipart upload), an empty folder."""
    files = {
        "top.txt": b"top\n",
        "empty.bin": b"",
        "a/one.bin": payload(300 * 1024 + 7, seed=1),
        "a/b/c/deep.txt": b"deep\n",
        "a/b/big.bin": payload(20 * MiB, seed=2),
        "a/b/c/empty-too": b"",
        "names with spaces/x y.txt": b"spaces\n",
    }
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "empty-folder").mkdir()
    return files


def test_recursive_round_trip_is_byte_exact(account, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    total = sum(len(d) for d in files.values())
    assert ok(cli(account, "mb", "s3://tree")) == "created s3://tree\n"

    out = ok(cli(account, "cp", "--recursive", str(src), "s3://tree/up/"))
    assert out.startswith(f"uploaded {len(files)} files ("), out
    assert f"from {src} to s3://tree/up/ in " in out, out
    assert tree_files(account.root / "tree" / "up") == tree_files(src)

    listing = ok(cli(account, "ls", "--recursive", "s3://tree/up/")).splitlines()
    assert sorted(line.split(None, 3)[3] for line in listing) == sorted(f"up/{k}" for k in files)
    sizes = {line.split(None, 3)[3]: int(line.split()[0]) for line in listing}
    assert sizes["up/a/b/big.bin"] == 20 * MiB and sizes["up/empty.bin"] == 0

    # Down again, with cp (into a named folder) and with get (into the prefix's name), at one
    # job and at many.
    out = ok(cli(account, "cp", "-r", "--jobs", "1", "s3://tree/up", str(tmp_path / "down")))
    assert out.startswith(f"downloaded {len(files)} files (") and "to " + str(tmp_path / "down") in out, out
    assert tree_files(tmp_path / "down") == tree_files(src)
    ok(cli(account, "get", "--recursive", "--jobs", "16", "s3://tree/up/", cwd=tmp_path))
    assert tree_files(tmp_path / "up") == tree_files(src)
    assert sum((tmp_path / "up" / k).stat().st_size for k in files) == total
    assert not list((tmp_path / "up").rglob("*.cairn-part"))

    # put --recursive is the same upload; a folder without --recursive is refused.
    ok(cli(account, "put", "--recursive", str(src / "a"), "s3://tree/again"))
    assert tree_files(account.root / "tree" / "again") == tree_files(src / "a")
    fails_with(cli(account, "cp", str(src), "s3://tree/x/"), f"{src} is a folder (add --recursive to copy what is in it)")


def test_single_file_cp_both_ways(account, tmp_path):
    ok(cli(account, "mb", "s3://one"))
    data = payload(3 * MiB + 1, seed=7)
    (tmp_path / "f.bin").write_bytes(data)
    out = ok(cli(account, "cp", str(tmp_path / "f.bin"), "s3://one/dir/"))
    assert out == f"uploaded {len(data)} bytes to s3://one/dir/f.bin\n"
    (tmp_path / "into").mkdir()
    ok(cli(account, "cp", "s3://one/dir/f.bin", str(tmp_path / "into")))
    assert (tmp_path / "into" / "f.bin").read_bytes() == data
    ok(cli(account, "get", "s3://one/dir/f.bin", str(tmp_path / "g.bin")))
    assert (tmp_path / "g.bin").read_bytes() == data
    # A reader that stops early (`| head`) is not an error, as with `cat`.
    p = cli(account, shell='"$CAIRN" get s3://one/dir/f.bin - | head -c 10 >/dev/null; exit ${PIPESTATUS[0]}')
    assert (p.returncode, p.stderr) == (0, b"")
    p = cli(account, "cp", str(tmp_path / "f.bin"), str(tmp_path / "h.bin"))
    fails_with(p, f"cp copies between a local path and s3://; neither {tmp_path / 'f.bin'} nor {tmp_path / 'h.bin'} is s3://")


def test_buckets_mb_ls_rb(account, tmp_path):
    assert ok(cli(account, "ls")) == ""
    assert ok(cli(account, "mb", "s3://alpha")) == "created s3://alpha\n"
    assert ok(cli(account, "mb", "s3://beta/")) == "created s3://beta\n"
    assert (account.root / "alpha").is_dir()
    assert ok(cli(account, "mb", "s3://alpha")) == 'bucket "alpha" already exists\n'
    names = [line.split()[-1] for line in ok(cli(account, "ls")).splitlines()]
    assert names == ["alpha", "beta"]
    assert ok(cli(account, "ls", "s3://")).splitlines() == ok(cli(account, "ls")).splitlines()
    fails_with(cli(account, "ls", "s3://no"),
               'invalid bucket name "no": 3 to 63 lowercase letters, digits, \'.\' and \'-\', starting and '
               "ending with a letter or digit")
    fails_with(cli(account, "mb", "s3://No_Good"),
               'invalid bucket name "No_Good": 3 to 63 lowercase letters, digits, \'.\' and \'-\', starting and '
               "ending with a letter or digit")

    src = tmp_path / "src"
    files = make_tree(src)
    ok(cli(account, "cp", "-r", str(src), "s3://alpha"))
    fails_with(cli(account, "rb", "s3://alpha"),
               'bucket "alpha" is not empty (remove it with everything in it: cairn rb --force s3://alpha)')
    assert tree_files(account.root / "alpha") == tree_files(src)
    out = ok(cli(account, "rb", "--force", "s3://alpha"))
    assert out == f"deleted {len(files)} objects; removed s3://alpha\n"
    assert not (account.root / "alpha").exists()
    assert ok(cli(account, "rb", "s3://beta")) == "removed s3://beta\n"
    fails_with(cli(account, "rb", "s3://beta"), 'bucket "beta" does not exist')
    assert ok(cli(account, "ls")) == ""
    fails_with(cli(account, "mb", "s3://alpha/key"), "mb takes s3://BUCKET, not a key (s3://alpha/key)")


def test_rm_one_key_and_a_prefix(account, tmp_path):
    ok(cli(account, "mb", "s3://bkt"))
    src = tmp_path / "many"
    for i in range(60):
        p = src / f"d{i % 3}" / f"f{i:02}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * i)
    (tmp_path / "keep.txt").write_bytes(b"keep")
    ok(cli(account, "cp", "-r", str(src), "s3://bkt/many"))
    ok(cli(account, "put", str(tmp_path / "keep.txt"), "s3://bkt/many-not-under/keep.txt"))

    assert ok(cli(account, "rm", "s3://bkt/many/d0/f00.txt")) == "deleted s3://bkt/many/d0/f00.txt\n"
    fails_with(cli(account, "rm", "s3://bkt/many/d0/f00.txt"), "object s3://bkt/many/d0/f00.txt does not exist")
    fails_with(cli(account, "rm", "s3://bkt/many/d1"),
               "object s3://bkt/many/d1 does not exist, but objects are under s3://bkt/many/d1/ (delete them with: "
               "cairn rm --recursive s3://bkt/many/d1)")
    assert ok(cli(account, "rm", "--recursive", "--jobs", "16", "s3://bkt/many")) == "deleted 59 objects under s3://bkt/many/\n"
    assert not list((account.root / "bkt").rglob("f*.txt"))
    # `many` is a folder: `many-not-under/` is not under it.
    assert (account.root / "bkt" / "many-not-under" / "keep.txt").read_bytes() == b"keep"
    assert ok(cli(account, "rm", "-r", "s3://bkt/nothing/")) == "deleted 0 objects under s3://bkt/nothing/\n"


def test_errors_name_the_cause_in_one_line(account, tmp_path):
    (tmp_path / "f.txt").write_bytes(b"f")
    ok(cli(account, "mb", "s3://here"))
    missing = 'bucket "nope" does not exist (create it with: cairn mb s3://nope)'
    for args in (["ls", "s3://nope"], ["ls", "s3://nope/p/"], ["get", "s3://nope/k", "-"], ["stat", "s3://nope/k"],
                 ["put", str(tmp_path / "f.txt"), "s3://nope/k"], ["cp", "-r", str(tmp_path), "s3://nope/"],
                 ["cp", "-r", "s3://nope/p", str(tmp_path / "d")], ["rm", "s3://nope/k"], ["rm", "-r", "s3://nope/p"],
                 ["rb", "--force", "s3://nope"]):
        fails_with(cli(account, *args), missing)

    for args in (["get", "s3://here/no/such.bin", "-"], ["get", "s3://here/no/such.bin", str(tmp_path / "x")],
                 ["stat", "s3://here/no/such.bin"], ["cp", "s3://here/no/such.bin", str(tmp_path / "y")]):
        fails_with(cli(account, *args), "object s3://here/no/such.bin does not exist")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

    port = free_port()
    gone = f"http://127.0.0.1:{port}"
    for args in (["ls"], ["ls", "s3://here"], ["get", "s3://here/k", "-"], ["put", str(tmp_path / "f.txt"), "s3://here/"],
                 ["mb", "s3://x"], ["rb", "s3://x"], ["rm", "-r", "s3://here/p"], ["cp", "-r", str(tmp_path), "s3://here/"]):
        fails_with(cli(None, *args, endpoint=gone), f"cannot reach the node at {gone}: connection refused")
    for cmd in (["status"], ["sync", "here/p"], ["load", "s3://here/p"]):
        fails_with(cli(None, *cmd, env={"CAIRN_ADMIN": gone}),
                   f"cannot reach the node's admin endpoint at {gone}: connection refused (for a node on other ports "
                   "pass --admin http://HOST:PORT or set CAIRN_ADMIN)")

    fails_with(cli(account, "ls", "s3://here", env={"CAIRN_SECRET_KEY": "wrong"}),
               f'access denied by the node at {account.endpoint}: the secret key is not the one of access key '
               f'"{ACCESS_KEY}" (check --secret-key or CAIRN_SECRET_KEY)')
    fails_with(cli(account, "get", "s3://here/k", "-", env={"CAIRN_ACCESS_KEY": "stranger"}),
               f'access denied by the node at {account.endpoint}: it does not know the access key "stranger" '
               "(check --access-key or CAIRN_ACCESS_KEY)")
    fails_with(cli(account, "mb", "s3://new-one", env={"CAIRN_ACCESS_KEY": "stranger"}),
               f'access denied by the node at {account.endpoint}: it does not know the access key "stranger" '
               "(check --access-key or CAIRN_ACCESS_KEY)")
    fails_with(cli(account, "put", str(tmp_path / "absent.txt"), "s3://here/"),
               f"{tmp_path / 'absent.txt'}: no such file or directory")


def test_recursive_put_at_local_durability_then_sync(account, tmp_path):
    ok(cli(account, "mb", "s3://ckpt"))
    src = tmp_path / "step-1"
    files = make_tree(src)
    out = ok(cli(account, "put", "--recursive", "--durability", "local", str(src), "s3://ckpt/run/step-1/"))
    assert out.startswith(f"uploaded {len(files)} files"), out
    out = ok(cli(account, "sync", "ckpt/run/step-1/"))
    assert out == "synced s3://ckpt/run/step-1/: everything written before the call is in the origin\n"
    assert tree_files(account.root / "ckpt" / "run" / "step-1") == tree_files(src)


def test_help_shows_defaults_and_the_admin_endpoint():
    serve = subprocess.run([CAIRN_BIN, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    flags = [line.split()[0].rstrip(",") for line in serve.splitlines() if line.strip().startswith("-")]
    assert len(flags) > 30, serve
    # Each flag's description follows on its own line(s); every value flag ends with its default.
    entries = serve.split("\n      --")[1:]
    for entry in entries:
        name = entry.split()[0]
        if name.startswith(("help", "print-config")):
            continue
        assert "[default: " in entry, entry
        assert len(entry.splitlines()) >= 2, f"--{name} has no description"
    for needle in ("--listen <LISTEN>", "[default: 127.0.0.1:9000]", "[default: 127.0.0.1:9001]", "[default: ./.cairn]",
                   "[default: 1GiB]", "[default: file://./data in account mode]"):
        assert needle in serve, needle
    for cmd in ("sync", "status", "load"):
        text = subprocess.run([CAIRN_BIN, cmd, "--help"], capture_output=True, text=True, check=True).stdout
        assert "CAIRN_ADMIN" in text and "--admin" in text and "default: http://127.0.0.1:9001" in text, text


def test_folder_markers_and_awkward_keys(account, tmp_path):
    """Keys ending in '/' (the folder markers other tools make) are folders when downloaded and
    are deleted with the rest; keys with XML-special characters round-trip."""
    ok(cli(account, "mb", "s3://marks"))
    s3 = account.s3()
    s3.put_object(Bucket="marks", Key="p/empty/", Body=b"")
    s3.put_object(Bucket="marks", Key="p/full/", Body=b"")
    s3.put_object(Bucket="marks", Key="p/full/f.txt", Body=b"f")
    s3.put_object(Bucket="marks", Key="p/a&b <c> 'd'.txt", Body=b"amp")
    out = ok(cli(account, "get", "-r", "s3://marks/p", str(tmp_path / "down")))
    assert out.startswith("downloaded 2 files ("), out
    assert (tmp_path / "down" / "empty").is_dir()
    assert (tmp_path / "down" / "full" / "f.txt").read_bytes() == b"f"
    assert (tmp_path / "down" / "a&b <c> 'd'.txt").read_bytes() == b"amp"
    assert ok(cli(account, "rm", "-r", "s3://marks/p/")) == "deleted 4 objects under s3://marks/p/\n"
    assert s3.list_objects_v2(Bucket="marks").get("KeyCount") == 0
    assert ok(cli(account, "rb", "s3://marks")) == "removed s3://marks\n"
