//! The native halves of `cairn.Client.open()`'s file objects: a seekable reader of one object
//! version (sequential reads stream through the client's readahead) and a streaming writer whose
//! close acknowledges. The Python classes in `cairn/_file.py` give them the `io` interface.
//!
//! Each holds its client object behind a lock that is taken only with the GIL released, so a
//! thread waiting for the lock never holds the GIL that the lock's holder needs.

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{buffer, run};

type Shared<T> = std::sync::Arc<tokio::sync::Mutex<Option<T>>>;

fn closed() -> PyErr {
    PyValueError::new_err("I/O operation on closed file")
}

/// A reader of one object at the version it was opened at.
#[pyclass(frozen, module = "cairn._native")]
pub struct Reader {
    inner: Shared<cairn_client::Reader>,
    size: u64,
    stat: cairn_client::Stat,
}

impl Reader {
    pub(crate) fn new(r: cairn_client::Reader) -> Self {
        Self { size: r.size(), stat: r.stat().clone(), inner: std::sync::Arc::new(tokio::sync::Mutex::new(Some(r))) }
    }
}

#[pymethods]
impl Reader {
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    #[getter]
    fn etag(&self) -> String {
        self.stat.etag.clone()
    }

    #[getter]
    fn bucket(&self) -> String {
        self.stat.bucket.clone()
    }

    #[getter]
    fn key(&self) -> String {
        self.stat.key.clone()
    }

    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        let inner = &self.inner;
        py.detach(|| inner.blocking_lock().as_ref().map(|r| r.position())).ok_or_else(closed)
    }

    /// Moves to `pos` (from the start); past the end reads nothing.
    fn seek(&self, py: Python<'_>, pos: u64) -> PyResult<u64> {
        let inner = &self.inner;
        py.detach(|| {
            let mut g = inner.blocking_lock();
            let r = g.as_mut()?;
            r.seek(pos);
            Some(pos)
        })
        .ok_or_else(closed)
    }

    /// Fills `buf` (any writable buffer) from the position, short only at the end; how many bytes.
    fn readinto(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut held = buffer::writable(buf)?;
        self.readinto_slice(py, held.as_mut())
    }

    /// Up to `size` bytes from the position (all the rest when `size` is negative or None).
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let pos = self.tell(py)?;
        let left = self.size.saturating_sub(pos);
        let want = match size {
            Some(n) if n >= 0 => (n as u64).min(left),
            _ => left,
        } as usize;
        let mut got = 0;
        let b = PyBytes::new_with(py, want, |out| {
            got = self.readinto_slice(py, out)?;
            Ok(())
        })?;
        if got < want {
            return Ok(PyBytes::new(py, &b.as_bytes()[..got]));
        }
        Ok(b)
    }

    fn close(&self, py: Python<'_>) {
        let inner = &self.inner;
        let r = py.detach(|| inner.blocking_lock().take());
        drop(r);
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        let inner = &self.inner;
        py.detach(|| inner.blocking_lock().is_none())
    }
}

impl Reader {
    fn readinto_slice(&self, py: Python<'_>, out: &mut [u8]) -> PyResult<usize> {
        let inner = &self.inner;
        run(py, move || async move {
            let mut g = inner.lock().await;
            let Some(r) = g.as_mut() else { return Ok(None) };
            r.read(out).await.map(Some)
        })?
        .ok_or_else(closed)
    }
}

/// A new object being written; visible (and acknowledged) once closed.
#[pyclass(frozen, module = "cairn._native")]
pub struct Writer {
    inner: Shared<cairn_client::Writer>,
}

impl Writer {
    pub(crate) fn new(w: cairn_client::Writer) -> Self {
        Self { inner: std::sync::Arc::new(tokio::sync::Mutex::new(Some(w))) }
    }
}

#[pymethods]
impl Writer {
    /// Appends `data` (any buffer); its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let held = buffer::readable(data)?;
        let data = held.as_slice();
        let inner = &self.inner;
        run(py, move || async move {
            let mut g = inner.lock().await;
            let Some(w) = g.as_mut() else { return Ok(None) };
            w.write_bytes(Bytes::copy_from_slice(data)).await.map(|()| Some(data.len()))
        })?
        .ok_or_else(closed)
    }

    /// Bytes written so far.
    #[getter]
    fn written(&self, py: Python<'_>) -> u64 {
        let inner = &self.inner;
        py.detach(|| inner.blocking_lock().as_ref().map_or(0, |w| w.written()))
    }

    /// Completes the object; its ETag once acknowledged at the writer's durability.
    fn close(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let inner = &self.inner;
        run(py, move || async move {
            let w = inner.lock().await.take();
            match w {
                Some(w) => w.close().await.map(Some),
                None => Ok(None),
            }
        })
    }

    /// Gives the object up: nothing of it becomes visible.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        run(py, move || async move {
            let w = inner.lock().await.take();
            if let Some(w) = w {
                w.abort().await;
            }
            Ok(())
        })
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        let inner = &self.inner;
        py.detach(|| inner.blocking_lock().is_none())
    }
}
