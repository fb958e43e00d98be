"""The README's examples run as written. The ```sh, ```console and ```python blocks of the sections
"Using a node", "The cairn CLI", "Python" and "Checkpoint writes" run, in README order, against one node
started on the embedded default (`cairn serve` with no config, in a fresh folder: ./data as the
origin in account mode, the default credentials), the way a new user would run them; the files
they name (`shard.tar`, `rank-03.pt`, ...) are created first, as a user would have them.

Only the ports differ: the node listens on free ports instead of 9000/9001/6380 (another node may
hold those on a shared machine), so `127.0.0.1:9000` and `:9001` in a block are replaced by its
addresses and `cairn` finds it through CAIRN_ENDPOINT/CAIRN_ADMIN, which stand for the defaults.

- ```sh: each command (continuation lines joined) must exit 0, as a shell without pipefail reports it; `export` lines set the environment
  of the later ones. Checks below compare what named commands printed with what they must print.
- ```console: `$ command` lines followed by the output expected (stdout, then stderr), line by
  line; `...` in an expected line matches anything. A command whose expected output starts with
  `cairn: ` must fail with exit status 1, every other one must exit 0.
- ```python: run in one namespace shared by all blocks (the `s3` client of "Using a node" is used
  again in "Checkpoint writes").
- ```ini starting with `[cairn]` is rclone's config, written to ~/.config/rclone/rclone.conf.
- `<!-- readme-test: skip (reason) -->` right before a block leaves it out.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import CAIRN_BIN, ROOT, free_port, payload, stop, wait_port

README = ROOT / "README.md"
SECTIONS = ["Using a node", "The cairn CLI", "Python", "Checkpoint writes"]
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
# The files the examples name, as a user would have them.
FIXTURES = {
    "shard-0000.tar": 3 * 2**20 + 5,
    "model.safetensors": 2**20 + 3,
    "checkpoints/step-100/rank-0.pt": 2 * 2**20 + 7,
    "shard.tar": 10 * 2**20 + 11,
    "rank-03.pt": 5 * 2**20 + 1,
}


class Block:
    def __init__(self, section, lang, text, skip, line):
        self.section, self.lang, self.text, self.skip, self.line = section, lang, text, skip, line

    def __repr__(self):
        return f"README.md:{self.line} ({self.section}, {self.lang})"


def readme_blocks():
    """The fenced blocks of the tested sections, in order."""
    blocks, section, fence, body, skip, prev, start = [], None, None, [], None, "", 0
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                if section is not None:
                    blocks.append(Block(section, fence, "\n".join(body) + "\n", skip, start))
                fence, body = None, []
            else:
                body.append(line)
            continue
        if line.startswith("## "):
            title = line[3:].strip()
            section = next((s for s in SECTIONS if title.startswith(s)), None)
        elif line.startswith("```"):
            fence, start = line[3:].strip(), n
            m = SKIP_MARKER.search(prev)
            skip = m.group(1).strip() if m else None
        if line.strip():
            prev = line
    return blocks


def commands(text):
    """The commands of a shell block: continuation lines joined, comment-only lines dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def expected_line_matches(expected, actual):
    pattern = ".*".join(re.escape(part) for part in expected.rstrip().split("..."))
    return re.fullmatch(pattern, actual.rstrip()) is not None


class Runner:
    """Runs blocks in one working folder against one node, keeping what each command printed."""

    def __init__(self, work, env, s3_port, admin_port):
        self.work, self.env = work, env
        self.ports = {"127.0.0.1:9000": f"127.0.0.1:{s3_port}", "127.0.0.1:9001": f"127.0.0.1:{admin_port}"}
        self.outputs = {}  # command as written in the README -> CompletedProcess
        self.namespace = {}
        self.ran = []

    def local(self, text):
        for default, actual in self.ports.items():
            text = text.replace(default, actual)
        return text

    def shell(self, cmd):
        return subprocess.run(["bash", "-c", self.local(cmd)], cwd=self.work, env=self.env,
                              capture_output=True, timeout=300)

    def run(self, block):
        if block.skip is not None:
            return
        self.ran.append(block)
        if block.lang in ("sh", "bash"):
            for cmd in commands(block.text):
                if cmd.startswith("export "):
                    for assignment in shlex.split(cmd[len("export "):]):
                        name, value = assignment.split("=", 1)
                        self.env[name] = self.local(value)
                    continue
                p = self.shell(cmd)
                assert p.returncode == 0, f"{block}: `{cmd}` exited {p.returncode}\n{p.stdout[-2000:]!r}\n{p.stderr[-2000:]!r}"
                self.outputs[cmd.split("#")[0].strip()] = p
        elif block.lang == "console":
            self.console(block)
        elif block.lang == "python":
            # Python blocks run in this process: they see the node through the same CAIRN_*
            # variables the shell blocks get (cairn.Client() reads them).
            cwd, saved = os.getcwd(), dict(os.environ)
            os.chdir(self.work)
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("CAIRN_")})
            try:
                exec(compile(self.local(block.text), str(block), "exec"), self.namespace)
            finally:
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(saved)
        elif block.lang == "ini" and block.text.startswith("[cairn]"):
            conf = pathlib.Path(self.env["HOME"]) / ".config" / "rclone" / "rclone.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(self.local(block.text))
        else:
            self.ran.pop()

    def console(self, block):
        steps, cur = [], None
        for line in block.text.splitlines():
            if line.startswith("$ "):
                cur = (line[2:].split("  #")[0].strip(), [])
                steps.append(cur)
            elif cur is not None:
                cur[1].append(line)
        assert steps, f"{block}: no `$ ` commands"
        for cmd, expected in steps:
            p = self.shell(cmd)
            self.outputs[cmd] = p
            actual = (p.stdout + p.stderr).decode(errors="replace").splitlines()
            want_fail = bool(expected) and expected[0].startswith("cairn: ")
            assert p.returncode == (1 if want_fail else 0), (
                f"{block}: `{cmd}` exited {p.returncode}, expected {1 if want_fail else 0}\n{actual}")
            assert len(actual) == len(expected) and all(map(expected_line_matches, expected, actual)), (
                f"{block}: `{cmd}` printed\n" + "\n".join(actual) + "\nexpected\n" + "\n".join(expected))


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-readme")
    work, home, bindir = base / "work", base / "home", base / "bin"
    for d in (work, home, bindir):
        d.mkdir()
    (bindir / "cairn").symlink_to(pathlib.Path(CAIRN_BIN).resolve())
    for i, (name, size) in enumerate(FIXTURES.items()):
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(size, seed=100 + i))
    # Nothing of the caller's cairn or AWS settings leaks in: the examples assume defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_", "RCLONE_"))}
    s3_port, admin_port, kv_port = free_port(), free_port(), free_port()
    node_env = dict(env, CAIRN_LISTEN=f"127.0.0.1:{s3_port}", CAIRN_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
                    CAIRN_KV_LISTEN=f"127.0.0.1:{kv_port}")
    log = open(base / "node.log", "wb")
    node = subprocess.Popen([CAIRN_BIN, "serve"], cwd=work, env=node_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(s3_port, node)
        wait_port(admin_port, node)
        env.update(HOME=str(home), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
                   CAIRN_ENDPOINT=f"http://127.0.0.1:{s3_port}", CAIRN_ADMIN=f"http://127.0.0.1:{admin_port}",
                   AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="")
        yield Runner(work, env, s3_port, admin_port)
    finally:
        stop(node)
        log.close()


def test_sections_are_found_and_skips_are_few():
    blocks = readme_blocks()
    assert {b.section for b in blocks} == set(SECTIONS), [b.section for b in blocks]
    skipped = [b for b in blocks if b.skip is not None]
    assert len(skipped) <= 2, skipped
    assert all(b.skip for b in skipped), f"a skip must give its reason: {skipped}"


def tool(name):
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")


def test_readme_examples(runner):
    for name in ("aws", "rclone", "xxd", "curl"):
        tool(name)
    work = runner.work
    for block in readme_blocks():
        runner.run(block)
    assert len(runner.ran) >= 9, runner.ran
    out = runner.outputs
    fixture = {name: (work / name).read_bytes() for name in FIXTURES}

    # Using a node: boto3, aws-cli, rclone and cairn each read back what was written.
    assert runner.namespace["body"] == fixture["shard-0000.tar"][:1024]
    assert (work / "data/datasets/train/shard-0000.tar").read_bytes() == fixture["shard-0000.tar"]
    assert (work / "data/datasets/weights/model.safetensors").read_bytes() == fixture["model.safetensors"]
    assert b"model.safetensors" in out["aws --endpoint-url http://127.0.0.1:9000 s3 ls s3://datasets/weights/"].stdout
    rank0 = fixture["checkpoints/step-100/rank-0.pt"]
    assert (work / "data/datasets/checkpoints/step-100/rank-0.pt").read_bytes() == rank0
    xxd = subprocess.run("xxd | head", shell=True, input=rank0[:1024], capture_output=True).stdout
    cat = "rclone cat cairn:datasets/checkpoints/step-100/rank-0.pt --offset 0 --count 1024 | xxd | head"
    assert out[cat].stdout == xxd
    assert (work / "data/datasets/train/shard.tar").read_bytes() == fixture["shard.tar"]
    assert out["cairn get s3://datasets/train/shard.tar --range 0-1023 -"].stdout == fixture["shard.tar"][:1024]
    assert b"train/shard.tar" in out["cairn ls s3://datasets/train/"].stdout
    stat = out["cairn stat s3://datasets/train/shard.tar"].stdout.decode()
    assert f"size:          {len(fixture['shard.tar'])}" in stat.splitlines(), stat

    # The cairn CLI: the recursive round trip restored the exact bytes (the block itself compares
    # with cmp), and the bucket is gone again.
    assert not (work / "data/demo").exists()

    # Checkpoint writes: after `cairn sync` the local write is in the origin, byte for byte, and
    # the replicated write from Python reads back.
    assert (work / "data/ckpt/run-7/step-1000/rank-03.pt").read_bytes() == fixture["rank-03.pt"]
    assert b"synced s3://ckpt/run-7/step-1000/" in out["cairn sync ckpt/run-7/step-1000/"].stdout
    assert b"total: 0 objects" in out["cairn status"].stdout
    ns = runner.namespace
    got = ns["s3"].get_object(Bucket="ckpt", Key="run-7/step-1000/rank-3.pt")["Body"].read()
    assert got == ns["buf"].getvalue()
