//! `cairn._native.Client`: every call of [`cairn_client::Client`] with bucket and key arguments,
//! blocking (the GIL released) and as `*_async` awaitables. `cairn.Client` (Python) subclasses
//! it with `open()` and the path forms.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{Config, Durability, RangeRequest, Route};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::buffer;
use crate::file::{Reader, Writer};
use crate::{aio, run};

/// An object's current version and layout.
#[pyclass(frozen, module = "cairn._native", name = "Stat", get_all)]
pub struct Stat {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// The version chunks are named by (the origin's ETag, or a pending write's).
    pub version: String,
    /// RFC 3339.
    pub last_modified: String,
    pub content_type: Option<String>,
    pub chunk_size: u64,
}

#[pymethods]
impl Stat {
    fn __repr__(&self) -> String {
        format!("Stat(bucket={:?}, key={:?}, size={}, etag={:?})", self.bucket, self.key, self.size, self.etag)
    }

    /// The fields as a dict.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("bucket", &self.bucket)?;
        d.set_item("key", &self.key)?;
        d.set_item("size", self.size)?;
        d.set_item("etag", &self.etag)?;
        d.set_item("version", &self.version)?;
        d.set_item("last_modified", &self.last_modified)?;
        d.set_item("content_type", &self.content_type)?;
        d.set_item("chunk_size", self.chunk_size)?;
        Ok(d)
    }
}

impl From<cairn_client::Stat> for Stat {
    fn from(s: cairn_client::Stat) -> Self {
        Self {
            bucket: s.bucket,
            key: s.key,
            size: s.size,
            etag: s.etag,
            version: s.version,
            last_modified: s.last_modified,
            content_type: s.content_type,
            chunk_size: s.chunk_size,
        }
    }
}

/// A connection to a cairn pool. Safe to share between threads; a forked child (a data loader's
/// worker) connects again on its first call.
#[pyclass(subclass, frozen, module = "cairn._native", name = "Client")]
pub struct Client {
    cfg: Config,
    /// The client and the process it was made in.
    conn: Mutex<(u32, cairn_client::Client)>,
}

fn durability(d: Option<&str>) -> PyResult<Option<Durability>> {
    d.map(|s| s.parse::<Durability>().map_err(PyValueError::new_err)).transpose()
}

fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a positive number of seconds")))
}

/// The bytes of a whole object, or of `offset..offset+length`, read into a new `bytes` with the
/// GIL released (no copy but the one from the network).
fn read_bytes<'py>(
    py: Python<'py>,
    c: &cairn_client::Client,
    bucket: &str,
    key: &str,
    offset: u64,
    length: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let st = run(py, || c.stat(bucket, key))?;
    let end = length.map_or(st.size, |l| offset.saturating_add(l)).min(st.size);
    let len = end.saturating_sub(offset) as usize;
    let mut got = 0;
    let b = PyBytes::new_with(py, len, |buf| {
        got = run(py, || read_into_retrying(c, st, bucket, key, offset, buf))?;
        Ok(())
    })?;
    if got < len {
        return Ok(PyBytes::new(py, &b.as_bytes()[..got]));
    }
    Ok(b)
}

/// Reads into `buf` at the version `st`; once more at the new version if the object was replaced
/// in between.
async fn read_into_retrying(
    c: &cairn_client::Client,
    st: cairn_client::Stat,
    bucket: &str,
    key: &str,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, cairn_client::Error> {
    match c.read_into(&st, offset, buf).await {
        Err(cairn_client::Error::VersionChanged(_)) => {
            let st = c.stat(bucket, key).await?;
            c.read_into(&st, offset, buf).await
        }
        r => r,
    }
}

/// Objects of a listing as dicts (`name` is the key; prefixes are `type="directory"`).
fn listing<'py>(py: Python<'py>, l: cairn_client::Listing) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for p in l.prefixes {
        let d = PyDict::new(py);
        d.set_item("name", p)?;
        d.set_item("size", 0)?;
        d.set_item("type", "directory")?;
        out.append(d)?;
    }
    for o in l.objects {
        let d = PyDict::new(py);
        d.set_item("name", o.key)?;
        d.set_item("size", o.size)?;
        d.set_item("type", "file")?;
        d.set_item("etag", o.etag)?;
        d.set_item("last_modified", o.last_modified)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Reads every chunk of every object under `prefix` once (so the pool holds them); the bytes read.
async fn load(c: cairn_client::Client, bucket: String, prefix: String) -> Result<u64, cairn_client::Error> {
    let par = c.config().parallel.max(1);
    let objects = c.list(&bucket, &prefix, true).await?.objects;
    let stats: Vec<cairn_client::Stat> = futures::stream::iter(objects.iter().map(|o| c.stat(&bucket, &o.key)))
        .buffer_unordered(par)
        .try_collect()
        .await?;
    let chunks = stats.iter().flat_map(|st| {
        let n = if st.chunk_size == 0 { 0 } else { st.size.div_ceil(st.chunk_size) };
        (0..n).map(move |i| (st, i))
    });
    futures::stream::iter(chunks.map(|(st, i)| {
        let c = &c;
        async move { c.chunk(st, i, 0..usize::MAX).await.map(|b| b.len() as u64) }
    }))
    .buffer_unordered(par)
    .try_fold(0u64, |sum, n| futures::future::ready(Ok(sum + n)))
    .await
}

fn range_requests(ranges: Vec<(String, String, u64, Option<u64>)>) -> Vec<RangeRequest> {
    ranges.into_iter().map(|(bucket, key, offset, length)| RangeRequest { bucket, key, offset, length }).collect()
}

fn bytes_list(py: Python<'_>, v: Vec<Bytes>) -> PyResult<Py<PyAny>> {
    Ok(PyList::new(py, v.iter().map(|b| PyBytes::new(py, b)))?.into_any().unbind())
}

impl Client {
    /// The client of this process (connecting again in a forked child).
    pub(crate) fn handle(&self, py: Python<'_>) -> PyResult<cairn_client::Client> {
        let pid = std::process::id();
        {
            let conn = self.conn.lock();
            if conn.0 == pid {
                return Ok(conn.1.clone());
            }
        }
        let fresh = run(py, || cairn_client::Client::connect(self.cfg.clone()))?;
        let old = std::mem::replace(&mut *self.conn.lock(), (pid, fresh.clone()));
        // Its connections belong to the parent's runtime: leave them alone.
        std::mem::forget(old);
        Ok(fresh)
    }
}

#[pymethods]
impl Client {
    /// Connects to the pool `endpoint` (a node's S3 endpoint) belongs to. Arguments left out come
    /// from `CAIRN_ENDPOINT`, `CAIRN_ACCESS_KEY`, `CAIRN_SECRET_KEY`, `CAIRN_REGION` and
    /// `CAIRN_ROUTE` (`direct`: each chunk from its owner; `local`: all through `endpoint`).
    #[new]
    #[pyo3(signature = (endpoint=None, access_key=None, secret_key=None, route=None, *, region=None, timeout=None, parallel=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: Option<String>,
        access_key: Option<String>,
        secret_key: Option<String>,
        route: Option<String>,
        region: Option<String>,
        timeout: Option<f64>,
        parallel: Option<usize>,
    ) -> PyResult<Self> {
        let mut cfg = Config::from_env().map_err(crate::to_py)?;
        if let Some(v) = endpoint {
            cfg.endpoint = v;
        }
        if let Some(v) = access_key {
            cfg.access_key = v;
        }
        if let Some(v) = secret_key {
            cfg.secret_key = v;
        }
        if let Some(v) = route {
            cfg.route = v.parse::<Route>().map_err(PyValueError::new_err)?;
        }
        if let Some(v) = region {
            cfg.region = v;
        }
        if let Some(v) = timeout {
            cfg.timeout = seconds(v, "timeout")?;
        }
        if let Some(v) = parallel {
            cfg.parallel = v.max(1);
        }
        let c = run(py, || cairn_client::Client::connect(cfg.clone()))?;
        Ok(Self { cfg, conn: Mutex::new((std::process::id(), c)) })
    }

    #[getter]
    fn endpoint(&self) -> String {
        self.cfg.endpoint.clone()
    }

    #[getter]
    fn route(&self) -> &'static str {
        match self.cfg.route {
            Route::Direct => "direct",
            Route::Local => "local",
        }
    }

    /// Nodes this client reads from directly (0: everything goes through the endpoint).
    fn direct_members(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.direct_members())
    }

    /// The constructor's arguments (pickling: a data loader's worker connects on its own).
    fn _args(&self) -> (String, String, String, &'static str, String, f64, usize) {
        let c = &self.cfg;
        (
            c.endpoint.clone(),
            c.access_key.clone(),
            c.secret_key.clone(),
            self.route(),
            c.region.clone(),
            c.timeout.as_secs_f64(),
            c.parallel,
        )
    }

    fn __repr__(&self) -> String {
        format!("cairn.Client(endpoint={:?}, route={:?})", self.cfg.endpoint, self.route())
    }

    /// The object's current version, size and layout.
    fn stat(&self, py: Python<'_>, bucket: &str, key: &str) -> PyResult<Stat> {
        let c = self.handle(py)?;
        Ok(run(py, || c.stat(bucket, key))?.into())
    }

    /// Bytes `offset..offset+length` of an object (to its end when `length` is None).
    #[pyo3(signature = (bucket, key, offset=0, length=None))]
    fn read_range<'py>(
        &self,
        py: Python<'py>,
        bucket: &str,
        key: &str,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let c = self.handle(py)?;
        read_bytes(py, &c, bucket, key, offset, length)
    }

    /// Many ranges `(bucket, key, offset, length)` of many objects, fetched in parallel; the bytes
    /// in the order asked (`length` None: to the end).
    fn read_ranges(&self, py: Python<'_>, ranges: Vec<(String, String, u64, Option<u64>)>) -> PyResult<Py<PyAny>> {
        let c = self.handle(py)?;
        let reqs = range_requests(ranges);
        let got = run(py, || c.read_ranges(&reqs))?;
        bytes_list(py, got)
    }

    /// A whole object: as bytes, or copied into `out` (a writable buffer: bytearray,
    /// memoryview, numpy array) as it arrives, returning the number of bytes.
    #[pyo3(signature = (bucket, key, out=None))]
    fn get(&self, py: Python<'_>, bucket: &str, key: &str, out: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let c = self.handle(py)?;
        let Some(out) = out else {
            return Ok(read_bytes(py, &c, bucket, key, 0, None)?.into_any().unbind());
        };
        let mut held = buffer::writable(out)?;
        let st = run(py, || c.stat(bucket, key))?;
        if st.size > held.len() as u64 {
            return Err(PyValueError::new_err(format!(
                "out has {} bytes; s3://{bucket}/{key} has {}",
                held.len(),
                st.size
            )));
        }
        let buf = &mut held.as_mut()[..st.size as usize];
        let n = run(py, || read_into_retrying(&c, st, bucket, key, 0, buf))?;
        Ok(n.into_pyobject(py)?.into_any().unbind())
    }

    /// Copies `len(out)` bytes of an object from `offset` into `out` (fewer at its end); how many.
    #[pyo3(signature = (bucket, key, offset, out))]
    fn read_into(
        &self,
        py: Python<'_>,
        bucket: &str,
        key: &str,
        offset: u64,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let c = self.handle(py)?;
        let mut held = buffer::writable(out)?;
        let st = run(py, || c.stat(bucket, key))?;
        let buf = held.as_mut();
        run(py, || read_into_retrying(&c, st, bucket, key, offset, buf))
    }

    /// Many `(bucket, key, offset, out)`: each `out` filled from `offset`, all in parallel; the
    /// byte counts in order.
    fn read_ranges_into(
        &self,
        py: Python<'_>,
        ranges: Vec<(String, String, u64, Bound<'_, PyAny>)>,
    ) -> PyResult<Vec<usize>> {
        let c = self.handle(py)?;
        let mut held = ranges.iter().map(|r| buffer::writable(&r.3)).collect::<PyResult<Vec<_>>>()?;
        let wants: Vec<(&str, &str, u64)> = ranges.iter().map(|r| (r.0.as_str(), r.1.as_str(), r.2)).collect();
        let bufs: Vec<&mut [u8]> = held.iter_mut().map(|h| h.as_mut()).collect();
        run(py, || async {
            let mut objects: Vec<(&str, &str)> = wants.iter().map(|w| (w.0, w.1)).collect();
            objects.sort_unstable();
            objects.dedup();
            let par = c.config().parallel.max(1);
            let stats: HashMap<(&str, &str), cairn_client::Stat> =
                futures::stream::iter(objects.into_iter().map(|(b, k)| {
                    let c = &c;
                    async move { Ok::<_, cairn_client::Error>(((b, k), c.stat(b, k).await?)) }
                }))
                .buffer_unordered(par)
                .try_collect()
                .await?;
            futures::stream::iter(wants.iter().zip(bufs).map(|(w, buf)| {
                let st = &stats[&(w.0, w.1)];
                c.read_into(st, w.2, buf)
            }))
            .buffered(par)
            .try_collect()
            .await
        })
    }

    /// A reader of the object at its current version (`cairn.Client.open` wraps it in a file).
    fn reader(&self, py: Python<'_>, bucket: &str, key: &str) -> PyResult<Reader> {
        let c = self.handle(py)?;
        let r = run(py, || c.open(bucket, key))?;
        Ok(Reader::new(r))
    }

    /// A writer of a new object, acknowledged at `durability` (`local`, `replicated`, `origin`;
    /// None: the origin's configured one) when closed.
    #[pyo3(signature = (bucket, key, durability=None))]
    fn writer(&self, py: Python<'_>, bucket: &str, key: &str, durability: Option<&str>) -> PyResult<Writer> {
        let c = self.handle(py)?;
        let w = c.writer(bucket, key, self::durability(durability)?).map_err(crate::to_py)?;
        Ok(Writer::new(w))
    }

    /// Writes an object (any buffer: bytes, memoryview, numpy array); its ETag once acknowledged
    /// at `durability`.
    #[pyo3(signature = (bucket, key, data, durability=None))]
    fn put(
        &self,
        py: Python<'_>,
        bucket: &str,
        key: &str,
        data: &Bound<'_, PyAny>,
        durability: Option<&str>,
    ) -> PyResult<String> {
        let c = self.handle(py)?;
        let d = self::durability(durability)?;
        let held = buffer::readable(data)?;
        let data = held.as_slice();
        run(py, move || async move { c.put(bucket, key, Bytes::copy_from_slice(data), d).await })
    }

    fn delete(&self, py: Python<'_>, bucket: &str, key: &str) -> PyResult<()> {
        let c = self.handle(py)?;
        run(py, || c.delete(bucket, key))
    }

    /// Objects under `prefix` as dicts (`name`, `size`, `type`, `etag`, `last_modified`); one
    /// level with the prefixes below as `type="directory"`, or every level when `recursive`.
    #[pyo3(signature = (bucket, prefix="", recursive=false))]
    fn ls<'py>(&self, py: Python<'py>, bucket: &str, prefix: &str, recursive: bool) -> PyResult<Bound<'py, PyList>> {
        let c = self.handle(py)?;
        let l = run(py, || c.list(bucket, prefix, recursive))?;
        listing(py, l)
    }

    /// Waits until every write under `bucket`/`prefix` acknowledged before the call is in the
    /// origin (`timeout` in seconds: `cairn.Error` when it passes first).
    #[pyo3(signature = (bucket, prefix="", timeout=None))]
    fn sync(&self, py: Python<'_>, bucket: &str, prefix: &str, timeout: Option<f64>) -> PyResult<()> {
        let c = self.handle(py)?;
        let t = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        run(py, || c.sync(bucket, prefix, t))
    }

    /// Reads every object under `prefix` once, in parallel, so the pool holds it; the bytes read.
    #[pyo3(signature = (bucket, prefix=""))]
    fn load(&self, py: Python<'_>, bucket: &str, prefix: &str) -> PyResult<u64> {
        let c = self.handle(py)?;
        run(py, || load(c, bucket.to_owned(), prefix.to_owned()))
    }

    // The same calls as awaitables of the running asyncio loop.

    fn stat_async<'py>(&self, py: Python<'py>, bucket: String, key: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        aio::spawn(
            py,
            move || async move { c.stat(&bucket, &key).await },
            |py, st| Ok(Bound::new(py, Stat::from(st))?.into_any().unbind()),
        )
    }

    #[pyo3(signature = (bucket, key, offset=0, length=None))]
    fn read_range_async<'py>(
        &self,
        py: Python<'py>,
        bucket: String,
        key: String,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        aio::spawn(
            py,
            move || async move { c.read_range(&bucket, &key, offset, length).await },
            |py, b| Ok(PyBytes::new(py, &b).into_any().unbind()),
        )
    }

    fn read_ranges_async<'py>(
        &self,
        py: Python<'py>,
        ranges: Vec<(String, String, u64, Option<u64>)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        let reqs = range_requests(ranges);
        aio::spawn(py, move || async move { c.read_ranges(&reqs).await }, bytes_list)
    }

    fn get_async<'py>(&self, py: Python<'py>, bucket: String, key: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        aio::spawn(
            py,
            move || async move { c.get(&bucket, &key).await },
            |py, b| Ok(PyBytes::new(py, &b).into_any().unbind()),
        )
    }

    #[pyo3(signature = (bucket, key, data, durability=None))]
    fn put_async<'py>(
        &self,
        py: Python<'py>,
        bucket: String,
        key: String,
        data: &Bound<'_, PyAny>,
        durability: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        let d = self::durability(durability)?;
        let data = Bytes::copy_from_slice(buffer::readable(data)?.as_slice());
        aio::spawn(
            py,
            move || async move { c.put(&bucket, &key, data, d).await },
            |py, etag| Ok(etag.into_pyobject(py)?.into_any().unbind()),
        )
    }

    fn delete_async<'py>(&self, py: Python<'py>, bucket: String, key: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        aio::spawn(py, move || async move { c.delete(&bucket, &key).await }, |py, ()| Ok(py.None()))
    }

    #[pyo3(signature = (bucket, prefix=String::new(), recursive=false))]
    fn ls_async<'py>(
        &self,
        py: Python<'py>,
        bucket: String,
        prefix: String,
        recursive: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        aio::spawn(
            py,
            move || async move { c.list(&bucket, &prefix, recursive).await },
            |py, l| Ok(listing(py, l)?.into_any().unbind()),
        )
    }

    #[pyo3(signature = (bucket, prefix=String::new(), timeout=None))]
    fn sync_async<'py>(
        &self,
        py: Python<'py>,
        bucket: String,
        prefix: String,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        let t = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        aio::spawn(py, move || async move { c.sync(&bucket, &prefix, t).await }, |py, ()| Ok(py.None()))
    }

    #[pyo3(signature = (bucket, prefix=String::new()))]
    fn load_async<'py>(&self, py: Python<'py>, bucket: String, prefix: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.handle(py)?;
        aio::spawn(py, move || load(c, bucket, prefix), |py, n| Ok(n.into_pyobject(py)?.into_any().unbind()))
    }
}
