//! `cairn._native`: the cairn client ([`cairn_client`]) for Python. The pure-Python package
//! (`python/cairn/`) builds the file objects, the fsspec filesystem, the datasets and the
//! checkpoint helpers on top of it.
//!
//! - **One runtime.** A tokio multi-thread runtime owned by the module, made on first use, runs
//!   every request; a process forked from one that had it (a data loader's workers) makes its
//!   own, since the parent's worker threads do not exist in the child.
//! - **The GIL is released during I/O.** A call waits for its future with the GIL released and
//!   takes it back only to check for Ctrl-C now and then, so other Python threads run meanwhile.
//! - **Errors** name their cause in one line, as the Python exception that fits:
//!   `FileNotFoundError`, `PermissionError`, `ConnectionError`, else `cairn.Error`.

mod aio;
mod buffer;
mod client;
mod file;

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyFileNotFoundError, PyPermissionError, PyRuntimeError};
use pyo3::prelude::*;
use tokio::runtime::Runtime;

create_exception!(cairn, Error, PyRuntimeError, "A cairn request failed; the message names the cause.");

/// Bounds of the runtime's worker threads (the machine's cores, within these).
const MIN_WORKERS: usize = 2;
const MAX_WORKERS: usize = 4;
/// How often a call waiting for I/O takes the GIL to look for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The runtime of this process, with the process id it was made in.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// The module's runtime, made on first use in each process.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut made = RUNTIME.lock();
    if let Some((p, rt)) = *made
        && p == pid
    {
        return Ok(rt);
    }
    // A forked child holds the parent's runtime without its threads: leave it be (dropping it
    // would wait for threads that are not there) and make one of its own.
    let workers = std::thread::available_parallelism().map_or(MIN_WORKERS, |n| n.get()).clamp(MIN_WORKERS, MAX_WORKERS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("cairn-io")
        .enable_all()
        .build()
        .map_err(|e| Error::new_err(format!("cannot start the I/O runtime: {e}")))?;
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *made = Some((pid, rt));
    Ok(rt)
}

/// The Python exception for a client error, its message on one line.
pub(crate) fn to_py(e: cairn_client::Error) -> PyErr {
    use cairn_client::Error as E;
    let msg = one_line(&e.to_string());
    match e {
        E::NoSuchKey { .. } | E::NoSuchBucket(_) => PyFileNotFoundError::new_err(msg),
        E::AccessDenied(_) => PyPermissionError::new_err(msg),
        E::Unreachable { .. } => PyConnectionError::new_err(msg),
        _ => Error::new_err(msg),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the future `make` returns on the module's runtime with the GIL released; Ctrl-C
/// (checked every [`SIGNAL_POLL`]) abandons it with `KeyboardInterrupt`. The future is made on
/// the waiting thread, so it need not be `Send` (the client's parallel reads borrow).
pub(crate) fn run<T, F, M>(py: Python<'_>, make: M) -> PyResult<T>
where
    M: FnOnce() -> F + Send,
    F: Future<Output = Result<T, cairn_client::Error>>,
    T: Send,
{
    let rt = runtime()?;
    py.detach(|| {
        rt.block_on(async {
            let fut = make();
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    r = &mut fut => return r.map_err(to_py),
                    _ = tokio::time::sleep(SIGNAL_POLL) => Python::attach(|py| py.check_signals())?,
                }
            }
        })
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<client::Client>()?;
    m.add_class::<client::Stat>()?;
    m.add_class::<file::Reader>()?;
    m.add_class::<file::Writer>()?;
    Ok(())
}
