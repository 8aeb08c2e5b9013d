//! Counters, through the `metrics` facade when the `metrics` feature is on.
//!
//! Names (all counters, labelled with `backend`):
//! `matroska_hits_total`, `matroska_misses_total`, `matroska_puts_total`,
//! `matroska_stale_puts_refused_total`, `matroska_loads_total`,
//! `matroska_invalidations_total`, `matroska_entries_dropped_total`,
//! `matroska_decode_errors_total`, `matroska_backend_errors_total` (also labelled `operation`).

#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Hit,
    Miss,
    Put,
    StaleRefused,
    Load,
    Invalidation,
    EntriesDropped,
    DecodeError,
}

impl Counter {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn name(self) -> &'static str {
        match self {
            Counter::Hit => "matroska_hits_total",
            Counter::Miss => "matroska_misses_total",
            Counter::Put => "matroska_puts_total",
            Counter::StaleRefused => "matroska_stale_puts_refused_total",
            Counter::Load => "matroska_loads_total",
            Counter::Invalidation => "matroska_invalidations_total",
            Counter::EntriesDropped => "matroska_entries_dropped_total",
            Counter::DecodeError => "matroska_decode_errors_total",
        }
    }
}

#[inline]
pub(crate) fn count(counter: Counter, backend: &'static str, n: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(counter.name(), "backend" => backend).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = (counter, backend, n);
}

#[inline]
pub(crate) fn backend_error(backend: &'static str, operation: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("matroska_backend_errors_total", "backend" => backend, "operation" => operation)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, operation);
}
