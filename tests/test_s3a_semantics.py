"""The S3 behaviour Hadoop's s3a connector (Spark) relies on, against every origin: folder markers
(zero-byte objects whose key ends in '/'), CopyObject and UploadPartCopy (s3a's rename) with their
source conditions, and deletes that leave no empty folders behind on a folder origin."""

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import CHUNK, LocalOrigin, payload


def code_of(exc):
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def keys_of(page):
    return [o["Key"] for o in page.get("Contents", [])]


def prefixes_of(page):
    return [p["Prefix"] for p in page.get("CommonPrefixes", [])]


@pytest.mark.writes
def test_folder_marker_round_trip(node, prefix):
    s3 = node.s3()
    marker = prefix + "dir/"
    r = s3.put_object(Bucket="data", Key=marker, Body=b"")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    h = s3.head_object(Bucket="data", Key=marker)
    assert h["ContentLength"] == 0
    assert s3.get_object(Bucket="data", Key=marker)["Body"].read() == b""

    # Listed as an object of its own, rolled up into its folder by a delimiter.
    assert keys_of(s3.list_objects_v2(Bucket="data", Prefix=prefix)) == [marker]
    page = s3.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/")
    assert (keys_of(page), prefixes_of(page)) == ([], [marker])
    page = s3.list_objects_v2(Bucket="data", Prefix=marker, Delimiter="/")
    assert (keys_of(page), prefixes_of(page)) == ([marker], [])
    assert [o["Size"] for o in page["Contents"]] == [0]

    # Objects inside the marked folder, and a marker nested in it, list beside it in key order.
    s3.put_object(Bucket="data", Key=marker + "file", Body=b"inside")
    s3.put_object(Bucket="data", Key=marker + "sub/", Body=b"")
    assert keys_of(s3.list_objects_v2(Bucket="data", Prefix=prefix)) == [marker, marker + "file", marker + "sub/"]
    page = s3.list_objects_v2(Bucket="data", Prefix=marker, Delimiter="/")
    assert (keys_of(page), prefixes_of(page)) == ([marker, marker + "file"], [marker + "sub/"])
    page = s3.list_objects_v2(Bucket="data", Prefix=prefix, StartAfter=marker)
    assert keys_of(page) == [marker + "file", marker + "sub/"]

    # The marker is not the folder: the key without the '/' does not exist.
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key=prefix + "dir")
    assert code_of(e) == ("NoSuchKey", 404)

    # Deleting the marker leaves what is inside it; deleting the rest empties the prefix.
    r = s3.delete_object(Bucket="data", Key=marker)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="data", Key=marker)
    assert code_of(e) == ("404", 404)
    assert s3.get_object(Bucket="data", Key=marker + "file")["Body"].read() == b"inside"
    r = s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": marker + "file"}, {"Key": marker + "sub/"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == [marker + "file", marker + "sub/"]
    assert r.get("Errors", []) == []
    page = s3.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/")
    assert (keys_of(page), prefixes_of(page)) == ([], [])


@pytest.mark.writes
def test_missing_folder_marker(node, prefix):
    s3 = node.s3()
    s3.put_object(Bucket="data", Key=prefix + "dir/file", Body=b"x")
    # A folder that only exists because of the objects in it has no marker.
    for key in (prefix + "dir/", prefix + "nothing/"):
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket="data", Key=key)
        assert code_of(e) == ("404", 404)
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket="data", Key=key)
        assert code_of(e) == ("NoSuchKey", 404)
        r = s3.delete_object(Bucket="data", Key=key)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_object(Bucket="data", Key=prefix + "dir/file")["Body"].read() == b"x"


def test_folder_marker_name_and_empty_segments_are_refused(node, prefix):
    s3 = node.s3()
    for key in (prefix + ".cairn-folder", prefix + "dir/.cairn-folder", prefix + "dir//", prefix + "a//b/"):
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket="data", Key=key, Body=b"")
        assert code_of(e) == ("InvalidArgument", 400), key
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket="data", Key=key)
        assert code_of(e) == ("InvalidArgument", 400), key
    assert s3.list_objects_v2(Bucket="data", Prefix=prefix)["KeyCount"] == 0


@pytest.mark.writes
def test_folder_marker_written_back_later(node, prefix):
    """A marker acknowledged at `local` durability is readable at once and reaches the origin."""
    s3 = node.s3()
    s3.meta.events.register(
        "before-sign.s3.PutObject", lambda request, **_: request.headers.__setitem__("x-cairn-durability", "local")
    )
    s3.put_object(Bucket="data", Key=prefix + "later/", Body=b"")
    assert s3.head_object(Bucket="data", Key=prefix + "later/")["ContentLength"] == 0
    admin = f"http://{node.host}:{node.admin_port}"
    r = requests.post(f"{admin}/v1/sync?bucket=data&prefix={prefix}&timeout=60s", timeout=90)
    assert r.status_code == 200, r.text
    assert keys_of(s3.list_objects_v2(Bucket="data", Prefix=prefix)) == [prefix + "later/"]


@pytest.mark.writes
def test_copy_object(node, prefix):
    s3 = node.s3()
    src, dst = prefix + "src/data.bin", prefix + "dst/data.bin"
    body = payload(3 * CHUNK + 1234, seed=7)
    node.origin.put_direct(src, body)
    etag = s3.head_object(Bucket="data", Key=src)["ETag"]

    r = s3.copy_object(Bucket="data", Key=dst, CopySource={"Bucket": "data", "Key": src}, CopySourceIfMatch=etag)
    assert r["CopyObjectResult"]["ETag"].startswith('"')
    assert s3.get_object(Bucket="data", Key=dst)["Body"].read() == body
    assert s3.get_object(Bucket="data", Key=src)["Body"].read() == body
    # A rename as s3a does it: copy, then delete the source.
    s3.copy_object(
        Bucket="data", Key=prefix + "moved.bin", CopySource={"Bucket": "data", "Key": dst},
        MetadataDirective="REPLACE", ContentType="application/x-parquet",
    )
    s3.delete_object(Bucket="data", Key=dst)
    assert s3.get_object(Bucket="data", Key=prefix + "moved.bin")["Body"].read() == body
    assert keys_of(s3.list_objects_v2(Bucket="data", Prefix=prefix)) == [prefix + "moved.bin", src]

    # Folder markers copy like any object.
    s3.put_object(Bucket="data", Key=prefix + "m/", Body=b"")
    s3.copy_object(Bucket="data", Key=prefix + "n/", CopySource={"Bucket": "data", "Key": prefix + "m/"})
    assert s3.head_object(Bucket="data", Key=prefix + "n/")["ContentLength"] == 0


@pytest.mark.writes
def test_copy_object_errors(node, prefix):
    s3 = node.s3()
    src = prefix + "src"
    node.origin.put_direct(src, b"source bytes")
    etag = s3.head_object(Bucket="data", Key=src)["ETag"]
    copy = {"Bucket": "data", "Key": src}
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="data", Key=prefix + "a", CopySource=copy, CopySourceIfMatch='"0123456789abcdef"')
    assert code_of(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="data", Key=prefix + "a", CopySource=copy, CopySourceIfNoneMatch=etag)
    assert code_of(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="data", Key=prefix + "a", CopySource={"Bucket": "data", "Key": prefix + "missing"})
    assert code_of(e) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="data", Key=prefix + "a", CopySource={"Bucket": "no-such-bucket", "Key": "k"})
    assert code_of(e) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="data", Key=src, CopySource=copy)
    assert code_of(e) == ("InvalidRequest", 400)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="data", Key=prefix + "x/.cairn-folder", CopySource=copy)
    assert code_of(e) == ("InvalidArgument", 400)
    assert keys_of(s3.list_objects_v2(Bucket="data", Prefix=prefix)) == [src]
    # Onto itself with new metadata is allowed, and keeps the bytes.
    s3.copy_object(Bucket="data", Key=src, CopySource=copy, MetadataDirective="REPLACE", ContentType="text/plain")
    assert s3.get_object(Bucket="data", Key=src)["Body"].read() == b"source bytes"


@pytest.mark.writes
def test_upload_part_copy(node, prefix):
    """Large renames (s3a above fs.s3a.multipart.threshold, boto3's managed copy) copy in parts."""
    from boto3.s3.transfer import TransferConfig

    s3 = node.s3()
    src = prefix + "big/src.bin"
    body = payload(11 * 1024 * 1024 + 4321, seed=11)
    node.origin.put_direct(src, body)
    five = 5 * 1024 * 1024
    s3.copy({"Bucket": "data", "Key": src}, "data", prefix + "big/dst.bin",
            Config=TransferConfig(multipart_threshold=five, multipart_chunksize=five))
    assert s3.get_object(Bucket="data", Key=prefix + "big/dst.bin")["Body"].read() == body

    up = s3.create_multipart_upload(Bucket="data", Key=prefix + "parts")["UploadId"]
    copy = {"Bucket": "data", "Key": src}
    etag = s3.head_object(Bucket="data", Key=src)["ETag"]
    p1 = s3.upload_part_copy(Bucket="data", Key=prefix + "parts", UploadId=up, PartNumber=1, CopySource=copy,
                             CopySourceRange=f"bytes=0-{five - 1}", CopySourceIfMatch=etag)
    p2 = s3.upload_part_copy(Bucket="data", Key=prefix + "parts", UploadId=up, PartNumber=2, CopySource=copy,
                             CopySourceRange="bytes=100-199")
    # Malformed ranges are InvalidArgument; a range past the end of the source InvalidRange, as S3.
    for bad, want in ((f"bytes=0-{len(body)}", ("InvalidRange", 416)), ("bytes=10-5", ("InvalidArgument", 400)),
                      ("bytes=5-", ("InvalidArgument", 400))):
        with pytest.raises(ClientError) as e:
            s3.upload_part_copy(Bucket="data", Key=prefix + "parts", UploadId=up, PartNumber=3, CopySource=copy,
                                CopySourceRange=bad)
        assert code_of(e) == want, bad
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(Bucket="data", Key=prefix + "parts", UploadId=up, PartNumber=3, CopySource=copy,
                            CopySourceIfMatch='"0123456789abcdef"')
    assert code_of(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(Bucket="data", Key=prefix + "parts", UploadId="no-such-upload", PartNumber=1,
                            CopySource=copy)
    assert code_of(e) == ("NoSuchUpload", 404)
    parts = [{"PartNumber": n, "ETag": p["CopyPartResult"]["ETag"]} for n, p in ((1, p1), (2, p2))]
    s3.complete_multipart_upload(Bucket="data", Key=prefix + "parts", UploadId=up, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket="data", Key=prefix + "parts")["Body"].read() == body[:five] + body[100:200]


def test_deletes_leave_no_empty_folders_on_a_folder_origin(make_node, tmp_path, prefix):
    origin = LocalOrigin(tmp_path / "origin")
    node = make_node(origin.toml())
    s3 = node.s3()
    keys = [prefix + k for k in ("a/b/c/deep", "a/b/marker/", "a/side", "top")]
    for k in keys:
        s3.put_object(Bucket="data", Key=k, Body=b"" if k.endswith("/") else b"bytes")
    assert (origin.root / prefix / "a/b/marker/.cairn-folder").is_file()

    s3.delete_object(Bucket="data", Key=prefix + "a/b/c/deep")
    assert not (origin.root / prefix / "a/b/c").exists()
    page = s3.list_objects_v2(Bucket="data", Prefix=prefix + "a/b/", Delimiter="/")
    assert (keys_of(page), prefixes_of(page)) == ([], [prefix + "a/b/marker/"])

    s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": prefix + "a/b/marker/"}, {"Key": prefix + "a/side"}]})
    assert not (origin.root / prefix / "a").exists()
    page = s3.list_objects_v2(Bucket="data", Prefix=prefix, Delimiter="/")
    assert (keys_of(page), prefixes_of(page)) == ([prefix + "top"], [])
    s3.delete_object(Bucket="data", Key=prefix + "top")
    assert not (origin.root / prefix.rstrip("/")).exists()
    # The bucket's own folder stays.
    assert origin.root.is_dir()
    assert s3.list_objects_v2(Bucket="data")["KeyCount"] == 0
