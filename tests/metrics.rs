//! Counters reach whatever recorder the application installs through the `metrics` facade.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use matroska::{Cache, Dependency};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

#[derive(Default)]
struct Totals(Mutex<HashMap<String, Arc<Total>>>);

#[derive(Default)]
struct Total(AtomicU64);

impl CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

struct Capture(Arc<Totals>);

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut totals = self.0.0.lock().unwrap();
        let total = totals.entry(key.name().to_owned()).or_default();
        Counter::from_arc(Arc::clone(total))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn total(totals: &Totals, name: &str) -> u64 {
    totals
        .0
        .lock()
        .unwrap()
        .get(name)
        .map_or(0, |t| t.0.load(Ordering::Relaxed))
}

#[tokio::test]
async fn operations_are_counted() {
    let totals = Arc::new(Totals::default());
    metrics::set_global_recorder(Capture(Arc::clone(&totals)))
        .expect("the only recorder of this test binary");
    let cache = Cache::memory();
    let dep = Dependency::id("author", 1);

    assert_eq!(cache.get::<i32>("k").await.unwrap(), None);
    cache
        .put("k", &1, std::slice::from_ref(&dep), None)
        .await
        .unwrap();
    cache
        .put("j", &2, std::slice::from_ref(&dep), None)
        .await
        .unwrap();
    assert_eq!(cache.get::<i32>("k").await.unwrap(), Some(1));
    assert_eq!(
        cache.get::<String>("j").await.unwrap(),
        None,
        "wrong type: a decode error"
    );
    assert_eq!(cache.invalidate(&[dep]).await.unwrap().dropped(), Some(1));

    assert_eq!(total(&totals, "matroska_hits_total"), 1);
    assert_eq!(total(&totals, "matroska_misses_total"), 2);
    assert_eq!(total(&totals, "matroska_puts_total"), 2);
    assert_eq!(total(&totals, "matroska_decode_errors_total"), 1);
    assert_eq!(total(&totals, "matroska_invalidations_total"), 1);
    assert_eq!(total(&totals, "matroska_entries_dropped_total"), 1);
}
