//! The Python binding of `segmentd-replica`: the same replica (its follow thread, its table)
//! inside a Python process, answering `is_member` and friends from Python in well under a
//! microsecond, most of it the interpreter's call. Checks keep the GIL (releasing and taking it
//! back would cost more than the check); `wait_ready` and `close` release it while they wait.

use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyDict;

use segmentd_replica::{Error, Replica as Inner};

create_exception!(
    segmentd_replica,
    ReplicaError,
    PyException,
    "The replica could not answer."
);
create_exception!(
    segmentd_replica,
    NotReady,
    ReplicaError,
    "No snapshot yet: the replica is still connecting or bootstrapping (see wait_ready)."
);
create_exception!(
    segmentd_replica,
    UnknownSegment,
    ReplicaError,
    "The segment is not followed (not asked for, or deleted on the server)."
);
create_exception!(
    segmentd_replica,
    Stale,
    ReplicaError,
    "Nothing heard from the server for longer than max_staleness."
);

fn py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::NotReady { .. } => NotReady::new_err(message),
        Error::UnknownSegment(_) => UnknownSegment::new_err(message),
        Error::Stale { .. } => Stale::new_err(message),
        Error::Config(_) => PyValueError::new_err(message),
    }
}

fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what}: {s} is not a number of seconds")))
}

/// A replica of a segmentd server's segment membership, followed on a thread of its own.
///
/// `Replica(addr, segments, token=None, tls_ca=None, tls_domain=None, max_staleness=None,
/// connect_timeout=5.0)`: `addr` is `http://host:port` (or `https://` with `tls_ca`, PEM
/// bytes); `segments` the ids to follow (every segment when empty); `max_staleness` (seconds) makes checks raise `Stale`
/// instead of answering from a replica that has heard nothing from the server for longer.
#[pyclass(frozen, module = "segmentd_replica")]
struct Replica {
    inner: Inner,
}

#[pymethods]
impl Replica {
    #[new]
    #[pyo3(signature = (addr, segments=Vec::new(), *, token=None, tls_ca=None, tls_domain=None, max_staleness=None, connect_timeout=5.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        addr: String,
        segments: Vec<String>,
        token: Option<String>,
        tls_ca: Option<Vec<u8>>,
        tls_domain: Option<String>,
        max_staleness: Option<f64>,
        connect_timeout: f64,
    ) -> PyResult<Self> {
        let mut b = Inner::builder(addr)
            .segments(segments)
            .connect_timeout(seconds("connect_timeout", connect_timeout)?);
        if let Some(t) = token {
            b = b.token(t);
        }
        if let Some(pem) = tls_ca {
            b = b.tls_ca(pem, tls_domain);
        }
        if let Some(s) = max_staleness {
            b = b.max_staleness(seconds("max_staleness", s)?);
        }
        Ok(Replica {
            inner: b.start().map_err(py_err)?,
        })
    }

    /// Blocks (without the GIL) until the first snapshot has landed, at most `timeout` seconds;
    /// raises `NotReady` (with the last connection error) past it.
    #[pyo3(signature = (timeout=10.0))]
    fn wait_ready(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds("timeout", timeout)?;
        py.detach(|| self.inner.wait_ready(timeout)).map_err(py_err)
    }

    /// Whether the customer is in the segment: `None` for a customer the server does not know.
    fn is_member(&self, customer_id: &str, segment_id: &str) -> PyResult<Option<bool>> {
        self.inner.is_member(customer_id, segment_id).map_err(py_err)
    }

    /// The customer against several segments, in order (`None` for an unknown customer).
    fn check(&self, customer_id: &str, segment_ids: Vec<PyBackedStr>) -> PyResult<Option<Vec<bool>>> {
        // The ids' UTF-8 as Python holds it, not copied.
        let ids: Vec<&str> = segment_ids.iter().map(|s| &**s).collect();
        self.inner.check(customer_id, &ids).map_err(py_err)
    }

    /// Every followed segment the customer is in, sorted (`None` for an unknown customer).
    fn segments_of(&self, customer_id: &str) -> PyResult<Option<Vec<String>>> {
        Ok(self
            .inner
            .segments_of(customer_id)
            .map_err(py_err)?
            .map(|ids| ids.iter().map(|s| s.to_string()).collect()))
    }

    /// A followed segment's members (a pass over the whole table: not for the request path).
    fn size(&self, segment_id: &str) -> PyResult<u64> {
        self.inner.size(segment_id).map_err(py_err)
    }

    /// Where the replica stands: ready, connected, sequence, staleness and lag (seconds),
    /// snapshots, reconnects, last_error, customers, segments, bytes.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.status();
        let d = PyDict::new(py);
        d.set_item("ready", s.ready)?;
        d.set_item("connected", s.connected)?;
        d.set_item("epoch", s.epoch)?;
        d.set_item("sequence", s.sequence)?;
        d.set_item("log_sequence", s.log_sequence)?;
        d.set_item("staleness", s.staleness.map(|d| d.as_secs_f64()))?;
        d.set_item("lag", s.lag.as_secs_f64())?;
        d.set_item("snapshots", s.snapshots)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("last_error", s.last_error)?;
        d.set_item("customers", s.customers)?;
        d.set_item(
            "segments",
            s.segments.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        d.set_item("bytes", s.bytes)?;
        Ok(d)
    }

    /// Stops following (the thread ends; answers then come from the last state, `Stale` past
    /// `max_staleness`). Also on leaving a `with` block.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Option<Bound<'_, PyAny>>,
        _value: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Replica>()?;
    let py = m.py();
    m.add("ReplicaError", py.get_type::<ReplicaError>())?;
    m.add("NotReady", py.get_type::<NotReady>())?;
    m.add("UnknownSegment", py.get_type::<UnknownSegment>())?;
    m.add("Stale", py.get_type::<Stale>())?;
    Ok(())
}
