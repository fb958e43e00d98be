//! Awaitables for asyncio: a call runs as a task of the module's runtime and completes a future
//! of the caller's running loop through `loop.call_soon_threadsafe` (the loop's thread is never
//! blocked). Cancelling the asyncio future abandons the call (its result is dropped).

use std::future::Future;

use pyo3::prelude::*;

use crate::{runtime, to_py};

/// Python helpers in `cairn/_aio.py`: `resolve(future, ok, value)` (a no-op once the future is
/// done or cancelled) and `Abort(handle)`.
const HELPERS: &str = "cairn._aio";

/// Cancels the task when its asyncio future is cancelled, if it has not started (a done callback).
#[pyclass(frozen, module = "cairn._native")]
pub struct Abort(tokio::task::AbortHandle);

#[pymethods]
impl Abort {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}

/// Runs the future `make` returns on the module's runtime; an asyncio future of the running loop
/// that completes with `convert`'s value (or the error as its exception). The future is driven
/// from one of the runtime's blocking threads, so it need not be `Send` (the client's parallel
/// reads borrow across their fetches).
pub(crate) fn spawn<'py, T, F, M, C>(py: Python<'py>, make: M, convert: C) -> PyResult<Bound<'py, PyAny>>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T, cairn_client::Error>>,
    T: Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let resolve = py.import(HELPERS)?.getattr("resolve")?.unbind();
    let (lp, fu) = (event_loop.unbind(), future.clone().unbind());
    let rt = runtime()?;
    let handle = rt.handle().clone();
    let task = rt.spawn_blocking(move || {
        let r = handle.block_on(make());
        Python::attach(|py| {
            let (ok, value) = match r.map_err(to_py).and_then(|t| convert(py, t)) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // Fails only when the loop is closed: nobody is waiting any more.
            let _ = lp.bind(py).call_method1("call_soon_threadsafe", (resolve, fu, ok, value));
        });
    });
    future.call_method1("add_done_callback", (Abort(task.abort_handle()),))?;
    Ok(future)
}
