"""Apache Spark through cairn with Hadoop's s3a connector: a job in local mode reads a Parquet
dataset from the origin through a node's S3 endpoint, aggregates it and writes its result back
through the node (s3a's commit protocol: folder markers, listings, CopyObject renames, bulk
deletes); the result is checked row by row through Spark, through boto3 and at the origin."""

import glob
import io
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ACCESS_KEY, ROOT, SECRET_KEY, LocalOrigin, Node

# Installed by `cargo xtask deps` (see spark_deps in xtask/src/main.rs).
JARS = [ROOT / ".test-deps" / "spark-jars" / j for j in ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar")]
USERS = 37
ROWS_PER_FILE = 5000
FILES = 4


def java17_home():
    """Spark 3.5 runs on Java 17; a newer default JVM on the machine would break it."""
    found = sorted(glob.glob("/usr/lib/jvm/java-17-openjdk*"))
    if found:
        return found[0]
    home = os.environ.get("JAVA_HOME")
    if home and pathlib.Path(home, "bin", "java").exists():
        return home
    pytest.fail("Java 17 is missing: run `cargo xtask deps` (installs openjdk-17-jre-headless)")


@pytest.fixture(scope="module")
def spark_node(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spark")
    origin = LocalOrigin(workdir / "origin")
    node = Node(workdir / "node", origin.toml())
    node.origin = origin
    yield node
    node.stop()


@pytest.fixture(scope="module")
def spark(spark_node):
    for jar in JARS:
        if not jar.is_file():
            pytest.fail(f"{jar} is missing: run `cargo xtask deps`")
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    # What a job needs to read and write through a cairn node (README.md, "Spark").
    s3a = {
        "fs.s3a.endpoint": spark_node.endpoint,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.access.key": ACCESS_KEY,
        "fs.s3a.secret.key": SECRET_KEY,
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        # Fail fast in a test rather than retry for minutes.
        "fs.s3a.attempts.maximum": "2",
        "fs.s3a.retry.limit": "2",
        "fs.s3a.retry.interval": "200ms",
    }
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("cairn-s3a")
        .config("spark.jars", ",".join(str(j) for j in JARS))
        .config("spark.driver.memory", "1g")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.adaptive.enabled", "false")
    )
    for k, v in s3a.items():
        builder = builder.config(f"spark.hadoop.{k}", v)
    java_home = os.environ.get("JAVA_HOME")
    os.environ["JAVA_HOME"] = java17_home()
    try:
        session = builder.getOrCreate()
    finally:
        if java_home is None:
            del os.environ["JAVA_HOME"]
        else:
            os.environ["JAVA_HOME"] = java_home
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    # The JVM would otherwise live (with its heap) until the test session ends.
    gateway = SparkContext._gateway
    gateway.shutdown()
    gateway.proc.stdin.close()
    try:
        gateway.proc.wait(timeout=30)
    except Exception:
        gateway.proc.kill()
        gateway.proc.wait()
    SparkContext._gateway = None
    SparkContext._jvm = None


def dataset():
    """FILES Parquet files of (user, day, bytes) rows, and the per-user aggregate they make."""
    files, expected = [], {}
    n = 0
    for f in range(FILES):
        users, days, sizes = [], [], []
        for _ in range(ROWS_PER_FILE):
            user = f"user-{(n * 7919) % USERS:03d}"
            size = (n * 104729) % 10007
            users.append(user)
            days.append(n % 30)
            sizes.append(size)
            count, total, biggest = expected.get(user, (0, 0, -1))
            expected[user] = (count + 1, total + size, max(biggest, size))
            n += 1
        table = pa.table({"user": users, "day": pa.array(days, pa.int32()), "bytes": pa.array(sizes, pa.int64())})
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=1000)
        files.append(buf.getvalue())
    rows = sorted((u, c, t, b) for u, (c, t, b) in expected.items())
    return files, rows


def origin_files(root, prefix):
    base = pathlib.Path(root) / prefix
    return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())


def origin_folders(root, prefix):
    base = pathlib.Path(root) / prefix
    return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_dir())


def test_spark_reads_aggregates_and_writes_parquet_through_cairn(spark_node, spark):
    root = spark_node.origin.root
    files, expected = dataset()
    for i, body in enumerate(files):
        spark_node.origin.put_direct(f"events/part-{i:04d}.parquet", body)

    from pyspark.sql import functions as F

    events = spark.read.parquet("s3a://data/events/")
    assert events.count() == FILES * ROWS_PER_FILE
    result = events.groupBy("user").agg(
        F.count("*").alias("events"), F.sum("bytes").alias("total"), F.max("bytes").alias("biggest")
    )
    result.write.mode("overwrite").parquet("s3a://data/report/")

    # Through Spark: a fresh read of what the job wrote.
    back = spark.read.parquet("s3a://data/report/").collect()
    assert sorted((r.user, r.events, r.total, r.biggest) for r in back) == expected

    # Through boto3: the job's files, and nothing left of its commit.
    s3 = spark_node.s3()
    listed = s3.list_objects_v2(Bucket="data", Prefix="report/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    parts = [k for k in keys if k.endswith(".parquet")]
    assert parts and keys == sorted(["report/_SUCCESS"] + parts), keys
    top = s3.list_objects_v2(Bucket="data", Prefix="report/", Delimiter="/")
    assert top.get("CommonPrefixes", []) == [], "the commit's _temporary folder is still listed"
    bodies = {k: s3.get_object(Bucket="data", Key=k)["Body"].read() for k in parts}
    tables = [pq.read_table(io.BytesIO(b)) for b in bodies.values()]
    rows = sorted(
        row
        for t in tables
        for row in zip(*(t.column(c).to_pylist() for c in ("user", "events", "total", "biggest")))
    )
    assert rows == expected

    # At the origin (written through at the default `origin` durability): the same bytes, and
    # no folder left behind by the commit.
    assert origin_files(root, "report") == keys
    for k, b in bodies.items():
        assert (root / k).read_bytes() == b
    assert origin_folders(root, "report") == []


def test_spark_partitioned_overwrite_leaves_only_the_new_output(spark_node, spark):
    root = spark_node.origin.root
    rows = [(f"k{i % 3}", i) for i in range(60)]
    df = spark.createDataFrame(rows, "key string, value long")
    df.write.partitionBy("key").parquet("s3a://data/by-key/")
    assert origin_folders(root, "by-key") == ["by-key/key=k0", "by-key/key=k1", "by-key/key=k2"]

    # Overwriting deletes the old tree through s3a (a listing and bulk deletes) before writing.
    df.where("value < 30").write.mode("overwrite").partitionBy("key").parquet("s3a://data/by-key/")
    back = spark.read.parquet("s3a://data/by-key/").collect()
    assert sorted((r.key, r.value) for r in back) == sorted(r for r in rows if r[1] < 30)
    assert origin_folders(root, "by-key") == ["by-key/key=k0", "by-key/key=k1", "by-key/key=k2"]
    files = origin_files(root, "by-key")
    assert "by-key/_SUCCESS" in files
    assert all(f == "by-key/_SUCCESS" or f.endswith(".parquet") for f in files), files

    # Deleting the output through s3a leaves nothing at the origin, not even empty folders.
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path("s3a://data/by-key/")
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    assert fs.delete(path, True)
    assert not (root / "by-key").exists()
    s3 = spark_node.s3()
    top = s3.list_objects_v2(Bucket="data", Delimiter="/")
    assert "by-key/" not in [p["Prefix"] for p in top.get("CommonPrefixes", [])]
    assert s3.list_objects_v2(Bucket="data", Prefix="by-key")["KeyCount"] == 0


def test_s3a_empty_directory_is_a_folder_marker(spark_node, spark):
    root = spark_node.origin.root
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path("s3a://data/staging/empty")
    fs = path.getFileSystem(conf)
    assert fs.mkdirs(path)
    assert fs.getFileStatus(path).isDirectory()
    s3 = spark_node.s3()
    assert s3.head_object(Bucket="data", Key="staging/empty/")["ContentLength"] == 0
    assert (root / "staging/empty/.cairn-folder").is_file()
    listed = [str(st.getPath()) for st in fs.listStatus(jvm.org.apache.hadoop.fs.Path("s3a://data/staging/"))]
    assert listed == ["s3a://data/staging/empty"]

    # A file created inside replaces the marker (s3a deletes the markers above what it writes).
    out = fs.create(jvm.org.apache.hadoop.fs.Path("s3a://data/staging/empty/file"), True)
    out.write(bytearray(b"hello"))
    out.close()
    assert fs.getFileStatus(path).isDirectory()
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="staging/")["Contents"]) == [
        "staging/empty/file"
    ]
    assert fs.delete(jvm.org.apache.hadoop.fs.Path("s3a://data/staging"), True)
    assert not (root / "staging").exists()
