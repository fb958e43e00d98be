//! A caller's buffer (bytes, bytearray, memoryview, a numpy array of any dtype) seen as bytes
//! that the client reads into or writes from with the GIL released: chunks are copied from the
//! network straight into the caller's memory, with no buffer of ours in between.
#![allow(unsafe_code)]

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// An export of a Python object's memory, held while the client uses it.
pub(crate) struct Held {
    /// Keeps the export alive: while it is, the exporter keeps the memory where it is and of this
    /// size (a bytearray refuses to resize, a numpy array to reallocate).
    _buf: PyUntypedBuffer,
    ptr: usize,
    len: usize,
}

fn export(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PyUntypedBuffer> {
    let buf = PyUntypedBuffer::get(obj).map_err(|_| {
        PyTypeError::new_err(format!("{what} must support the buffer protocol (bytes, memoryview, numpy array)"))
    })?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what} must be C-contiguous")));
    }
    Ok(buf)
}

/// A buffer the client may write into.
pub(crate) fn writable(obj: &Bound<'_, PyAny>) -> PyResult<Held> {
    let buf = export(obj, "out")?;
    if buf.readonly() {
        return Err(PyValueError::new_err("out is read-only (pass a bytearray, memoryview or numpy array)"));
    }
    Ok(Held { ptr: buf.buf_ptr() as usize, len: buf.len_bytes(), _buf: buf })
}

/// A buffer the client reads from.
pub(crate) fn readable(obj: &Bound<'_, PyAny>) -> PyResult<Held> {
    let buf = export(obj, "data")?;
    Ok(Held { ptr: buf.buf_ptr() as usize, len: buf.len_bytes(), _buf: buf })
}

impl Held {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memory, to be filled with the GIL released. Another Python thread may touch the same
    /// memory meanwhile, as with any extension that releases the GIL; the bytes are then its
    /// problem, never memory safety (the export keeps the memory alive and its size fixed).
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: a writable, C-contiguous export of `len` bytes at `ptr`, alive as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: a C-contiguous export of `len` bytes at `ptr`, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}
