//! Apps that log through the `log` crate (env_logger, as many actix-web apps do) and set no
//! tracing subscriber see matroska's events: tracing's `log` feature turns them into `log`
//! records. Its own test binary: no other test may set a tracing subscriber or a logger here.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use matroska_core::Cache;

/// Keeps every record's message.
struct Records(Mutex<Vec<String>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

static RECORDS: Records = Records(Mutex::new(Vec::new()));

#[tokio::test]
async fn events_reach_a_log_logger_without_a_tracing_subscriber() {
    log::set_logger(&RECORDS).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let cache = Cache::memory();
    assert_eq!(cache.get::<String>("absent").await.unwrap(), None);
    let records = RECORDS.0.lock().unwrap();
    assert!(
        records.iter().any(|r| r.contains("cache miss")),
        "no `cache miss` record among {records:?}"
    );
}
