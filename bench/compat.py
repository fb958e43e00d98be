#!/usr/bin/env python3
"""S3 conformance: Ceph's s3-tests against a cairn node and a moto server, in the same run.

    CAIRN_BIN=target/debug/cairn python3 bench/compat.py --s3-tests PATH [-k EXPR] [--keep]

(`cargo xtask compat [--s3-tests PATH]` installs the Python dependencies, builds the binary and
runs this.) s3-tests is used at the commit `PIN`. `PATH` (or `S3TESTS`) is a checkout of it, or a
git directory holding that commit (bare or not), from which the commit is exported; without one
the commit's tarball is downloaded from GitHub. Both end up in `.test-deps/s3-tests-<PIN>`, so
later runs need neither.

Started here on 127.0.0.1, with free ports, in one temporary directory: a cairn node (a
`file://` origin in account mode, so tests create and delete buckets; anonymous access off; the
s3-tests main, alt and tenant users as three access keys, which cairn treats alike) and
`moto.server`. The same selection of s3-tests runs against both at once: object and bucket
operations that a cache gateway serves. Left out by marker and name: IAM, STS, ACLs, bucket
policies, versioning, object lock, lifecycle, encryption, website, CORS, tagging, logging,
notifications, S3 Select, SigV2, and RGW-only behaviour (`fails_on_aws`); left out by
`compat_plugin.py`: tests whose code uses ACLs.

The table (passed per area, cairn and moto) and cairn's failures with their error are written
between the result markers of COMPAT.md and printed.
"""

import argparse
import collections
import concurrent.futures
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from toolkit import ROOT, cairn_binary, free_port, start, stop_all, wait_port  # noqa: E402

PIN = "8f0ae7b404a3a2fcf7038bf1e6bf29544fe9b6a3"
TARBALL = f"https://codeload.github.com/ceph/s3-tests/tar.gz/{PIN}"
TEST_FILES = ["s3tests/functional/test_s3.py", "s3tests/functional/test_headers.py"]
PER_TEST_TIMEOUT = 180
# Worker processes per server (pytest-xdist). Each worker has its own bucket prefix; the tests
# that look at every bucket of the account (GLOBAL_TESTS) run afterwards, alone.
WORKERS = 3
GLOBAL_TESTS = ["test_list_buckets_paginated", "test_buckets_list_ctime", "test_buckets_create_then_list"]

OUT_OF_SCOPE_MARKERS = [
    "auth_aws2", "bucket_policy", "bucket_encryption", "bucket_logging", "bucket_logging_cleanup",
    "encryption", "sse_s3", "lifecycle", "lifecycle_expiration", "lifecycle_transition", "object_lock",
    "versioning", "tagging", "s3website", "s3website_routing_rules", "s3website_redirect_location", "sns",
    "s3select", "iam_user", "iam_account", "iam_role", "iam_tenant", "iam_cross_account", "role_policy",
    "user_policy", "group", "group_policy", "session_policy", "test_of_sts", "webidentity_test", "abac_test",
    "cloud_transition", "cloud_restore", "target_by_bucket", "delete_marker", "object_ownership",
    "appendobject", "storage_class", "fails_on_aws", "fails_without_logging_rollover",
]
# Matched against test names (and, by pytest, module names: no word here may occur in
# "s3tests/functional/test_s3.py").
OUT_OF_SCOPE_NAMES = [
    "acl", "cors", "policy", "versioning", "version", "lock", "retention", "legal_hold", "tagging", "tags",
    "lifecycle", "encryption", "sse", "logging", "website", "public_access_block", "ownership", "torrent",
    "request_payment", "accelerate", "notification", "replication", "restore", "select", "append", "iam",
    "aws2",
]

# (area, substrings of the test name); the first area that matches wins.
AREAS = [
    ("auth (SigV4, presigned, anonymous)", ["authoriz", "authenticated", "x_amz_expires", "anon", "bad_auth",
                                            "invalid_auth", "amz_date", "requestid"]),
    ("POST upload (HTML form)", ["post_object"]),
    ("checksums and Content-MD5", ["checksum", "cksum", "bad_md5"]),
    ("conditional requests", ["ifmatch", "ifnonematch", "ifmodified", "ifunmodified", "if_match",
                              "if_none_match"]),
    ("GetObjectAttributes", ["object_attributes"]),
    ("multipart", ["multipart", "upload_part"]),
    ("copy", ["copy"]),
    ("list objects", ["bucket_list", "listv2", "key_count"]),
    ("bucket ops", ["bucket_create", "bucket_delete", "bucket_head", "bucket_notexist", "bucketv2_notexist",
                    "buckets_", "list_buckets", "bucket_get_location", "bucket_recreate", "bucket_owner",
                    "bucket_gone"]),
    ("ranged GET", ["ranged"]),
    ("malformed requests (headers)", ["bad_", "contentlength", "expect", "100_continue", "chunked",
                                      "contenttype"]),
    ("atomic reads and writes", ["atomic"]),
    ("object get/put/head/delete", [""]),
]

# Tests that need the alt user to be another owner than the main user: cairn has access keys,
# not owners (every key may do everything).
NEEDS_OWNERS = {
    "test_bucket_create_exists_nonowner", "test_object_copy_not_owned_bucket",
    "test_object_copy_not_owned_object_bucket", "test_list_multipart_upload_owner",
    "test_bucket_listv2_fetchowner_notempty", "test_expected_bucket_owner",
}

USERS = {"main": ("compat-main", "compat-main-secret"), "alt": ("compat-alt", "compat-alt-secret"),
         "tenant": ("compat-tenant", "compat-tenant-secret")}


def area_of(test):
    for area, words in AREAS:
        if any(w in test for w in words):
            return area
    raise AssertionError("unreachable: the last area matches everything")


def s3_tests_checkout(source):
    """The s3-tests tree at PIN, under .test-deps."""
    dest = ROOT / ".test-deps" / f"s3-tests-{PIN[:12]}"
    if (dest / "s3tests" / "functional" / "test_s3.py").exists():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if source:
        src = pathlib.Path(source)
        git_dir = src if (src / "objects").is_dir() and (src / "HEAD").is_file() else src / ".git"
        if git_dir.exists():
            archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", PIN],
                                     check=True, capture_output=True).stdout
            tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
        elif (src / "s3tests" / "functional" / "test_s3.py").exists():
            print(f"compat: {src} is not a git checkout; taking it as s3-tests at {PIN[:12]}", file=sys.stderr)
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        else:
            sys.exit(f"compat: {src} is neither an s3-tests checkout nor a git directory holding {PIN[:12]}")
    else:
        try:
            data = urllib.request.urlopen(TARBALL, timeout=60).read()
        except OSError as e:
            sys.exit(f"compat: cannot download {TARBALL} ({e}); give a checkout of ceph/s3-tests with "
                     "--s3-tests PATH or S3TESTS=PATH")
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            t.extractall(tmp, filter="data")
        (inner,) = list(tmp.iterdir())
        for p in inner.iterdir():
            p.rename(tmp / p.name)
        inner.rmdir()
    tmp.rename(dest)
    return dest


def s3tests_conf(path, port, users):
    sections = [f"[DEFAULT]\nhost = 127.0.0.1\nport = {port}\nis_secure = False\nssl_verify = False\n",
                "[fixtures]\nbucket prefix = compat-{random}-\n"]
    for name, (access, secret) in users.items():
        extra = "api_name =\n" if name == "main" else ("tenant = tenant\n" if name == "tenant" else "")
        sections.append(f"[s3 {name}]\ndisplay_name = {name}\nuser_id = {name}\nemail = {name}@example.com\n"
                        f"access_key = {access}\nsecret_key = {secret}\n{extra}")
    for name in ["iam", "iam root", "iam alt root"]:
        sections.append(f"[{name}]\ndisplay_name = x\nuser_id = x\nemail = x@example.com\naccess_key = x\n"
                        "secret_key = x\n")
    path.write_text("\n".join(sections))


def start_cairn(work, binary):
    port, admin = free_port(), free_port()
    origin = work / "cairn-origin"
    origin.mkdir()
    keys = ", ".join(f'{{ access_key = "{a}", secret_key = "{s}" }}' for a, s in USERS.values())
    conf = work / "cairn.toml"
    conf.write_text(f"""
[node]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[cache]
dir = "{work / 'cairn-cache'}"
ram_capacity = "256MiB"
disk_capacity = "2GiB"

[kv]
listen = ""

[auth]
allow_anonymous = false
keys = [{keys}]

[[origin]]
url = "file://{origin}"
""")
    proc = start([binary, "serve", "--config", str(conf)], work / "cairn.log")
    wait_port(port, proc)
    return proc, port


def start_moto(work):
    port = free_port()
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], work / "moto.log")
    wait_port(port, proc)
    return proc, port


def run_suite(tree, work, name, port, users, extra_k):
    """Runs the selection against one server: in parallel, then the global tests alone. Returns
    the junit files."""
    conf = work / f"{name}.conf"
    s3tests_conf(conf, port, users)
    k = "not (" + " or ".join(OUT_OF_SCOPE_NAMES) + ")"
    if extra_k:
        k = f"({k}) and ({extra_k})"
    only_global = " or ".join(GLOBAL_TESTS)
    env = dict(os.environ, S3TEST_CONF=str(conf), AWS_DEFAULT_REGION="us-east-1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), str(tree)]))
    env.pop("AWS_ENDPOINT_URL", None)
    log = open(work / f"{name}-pytest.log", "wb")
    junits = []
    for part, (sel, extra) in enumerate([(f"({k}) and not ({only_global})", ["-n", str(WORKERS)]),
                                         (f"({k}) and ({only_global})", [])]):
        junit = work / f"{name}-{part}.xml"
        cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider",
               "-p", "compat_plugin", "-m", "not (" + " or ".join(OUT_OF_SCOPE_MARKERS) + ")", "-k", sel,
               f"--junitxml={junit}", "-o", "junit_family=xunit1", f"--timeout={PER_TEST_TIMEOUT}", *extra]
        subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        if junit.exists():
            junits.append(junit)
    return junits


def first_line(text):
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def reason(message):
    """A short, stable description of why a test failed (random bucket names masked)."""
    line = first_line(message)
    m = re.search(r"An error occurred \((\w+)\) when calling the (\w+) operation", line)
    if m:
        return f"{m.group(2)} answered {m.group(1)}"
    line = re.sub(r"compat-[a-z0-9-]+", "<bucket>", line)
    line = re.sub(r"0x[0-9a-f]+", "0x…", line)
    return line[:160]


def results(junits):
    """test name -> (outcome, reason)."""
    out = {}
    cases = [c for junit in junits for c in ET.parse(junit).getroot().iter("testcase")]
    for case in cases:
        name = case.get("name")
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            out[name] = ("failed", reason(failure.get("message") or failure.text))
        elif error is not None:
            out[name] = ("error", reason(error.get("message") or error.text))
        elif skipped is not None:
            out[name] = ("skipped", first_line(skipped.get("message")))
        else:
            out[name] = ("passed", "")
    return out


def render(cairn, moto, command, seconds):
    tests = sorted(set(cairn) | set(moto))
    by_area = collections.OrderedDict((a, []) for a, _ in AREAS)
    for t in tests:
        by_area[area_of(t)].append(t)

    def passed(res, ts):
        return sum(1 for t in ts if res.get(t, ("missing",))[0] == "passed")

    def ran(res, ts):
        return sum(1 for t in ts if res.get(t, ("missing",))[0] not in ("skipped", "missing"))

    lines = [f"Command: `{command}` (s3-tests {PIN[:12]}; {len(tests)} tests selected; "
             f"{seconds:.0f} s).", "",
             "| area | tests | cairn passed | moto passed |", "|---|---:|---:|---:|"]
    for area, ts in by_area.items():
        if ts:
            lines.append(f"| {area} | {ran(cairn, ts)} | {passed(cairn, ts)} | {passed(moto, ts)} |")
    lines.append(f"| **all** | {ran(cairn, tests)} | **{passed(cairn, tests)}** | **{passed(moto, tests)}** |")
    skipped = sorted(t for t in tests if cairn.get(t, ("",))[0] == "skipped")
    if skipped:
        lines += ["", "Skipped by s3-tests itself (not counted): " + ", ".join(f"`{t}`" for t in skipped) + "."]

    lines += ["", "### cairn's failures, by error", ""]
    groups = collections.defaultdict(list)
    owners = "the alt user must be another owner (cairn's access keys all act as one)"
    for t in tests:
        outcome, why = cairn.get(t, ("missing", "no result"))
        if outcome in ("failed", "error", "missing"):
            groups[owners if t in NEEDS_OWNERS else f"`{why.replace('`', chr(39))}`"].append(t)
    for why, ts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        moto_ok = [t for t in ts if moto.get(t, ("",))[0] == "passed"]
        names = ", ".join(f"`{t}`" + ("*" if t in moto_ok else "") for t in ts)
        lines.append(f"- {len(ts)} × {why}: {names}")
    lines += ["", "`*`: moto passes it.", ""]
    moto_only = [t for t in tests if moto.get(t, ("",))[0] == "passed" and cairn.get(t, ("",))[0] != "passed"]
    cairn_only = [t for t in tests if cairn.get(t, ("",))[0] == "passed" and moto.get(t, ("",))[0] != "passed"]
    lines.append(f"cairn passes {len(cairn_only)} tests moto fails; moto passes {len(moto_only)} tests cairn fails.")
    return "\n".join(lines)


BEGIN, END = "<!-- compat results: begin (written by bench/compat.py) -->", "<!-- compat results: end -->"


def write_compat_md(table):
    path = ROOT / "COMPAT.md"
    text = path.read_text() if path.exists() else f"# S3 conformance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--s3-tests", default=os.environ.get("S3TESTS"), help="s3-tests checkout or git directory")
    ap.add_argument("-k", default="", help="further pytest -k selection (not written to COMPAT.md)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, junit files)")
    ap.add_argument("--report-from", metavar="DIR", help="write COMPAT.md from a kept work directory; run nothing")
    args = ap.parse_args()
    if args.report_from:
        work = pathlib.Path(args.report_from)
        res = {name: results(sorted(work.glob(f"{name}-*.xml"))) for name in ("cairn", "moto")}
        seconds = float((work / "seconds").read_text())
        table = render(res["cairn"], res["moto"], "cargo xtask compat", seconds)
        print(table)
        write_compat_md(table)
        return
    binary = cairn_binary()
    tree = s3_tests_checkout(args.s3_tests)
    work = pathlib.Path(tempfile.mkdtemp(prefix="cairn-compat-"))
    started = time.time()
    try:
        _, cairn_port = start_cairn(work, binary)
        _, moto_port = start_moto(work)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            runs = {
                "cairn": pool.submit(run_suite, tree, work, "cairn", cairn_port, USERS, args.k),
                "moto": pool.submit(run_suite, tree, work, "moto", moto_port, USERS, args.k),
            }
            res = {name: results(f.result()) for name, f in runs.items()}
        if not res["cairn"]:
            sys.exit(f"compat: no test ran; see {work}/cairn-pytest.log")
        seconds = time.time() - started
        (work / "seconds").write_text(f"{seconds:.0f}\n")
        table = render(res["cairn"], res["moto"], "cargo xtask compat", seconds)
        print(table)
        if args.k:
            print(f"compat: -k given, COMPAT.md left as it was; logs in {work}", file=sys.stderr)
        else:
            write_compat_md(table)
    finally:
        stop_all()
        if args.keep or args.k:
            print(f"compat: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
