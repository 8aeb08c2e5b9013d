//! At `debug` level every hit, miss, fill and invalidation leaves one event with its key and
//! dependency count, and never the cached value.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use matroska::{Cache, Dependency};
use tracing_subscriber::fmt::MakeWriter;

/// Log lines, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// The lines logged since the last call.
    fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn one_line<'a>(lines: &'a [String], message: &str) -> &'a str {
    let found: Vec<&String> = lines.iter().filter(|l| l.contains(message)).collect();
    assert_eq!(found.len(), 1, "one `{message}` event in {lines:#?}");
    found[0]
}

// One thread: the subscriber is this thread's default.
#[tokio::test(flavor = "current_thread")]
async fn hits_misses_fills_and_invalidations_are_logged_at_debug() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let cache = Cache::memory();
    let deps = [Dependency::id("article", 1), Dependency::id("author", 7)];
    let load = || async { Ok::<_, std::io::Error>(("secret-value".to_owned(), deps.to_vec())) };

    let _: String = cache.get_or_load("articles", None, load).await.unwrap();
    let lines = captured.take();
    assert!(one_line(&lines, "cache miss").contains("key=\"articles\""));
    let put = one_line(&lines, "cache put");
    assert!(
        put.contains("key=\"articles\"") && put.contains("deps=2"),
        "{put}"
    );

    let _: String = cache.get_or_load("articles", None, load).await.unwrap();
    let lines = captured.take();
    assert!(one_line(&lines, "cache hit").contains("key=\"articles\""));

    cache.invalidate(&deps[1..]).await.unwrap();
    let lines = captured.take();
    let invalidate = one_line(&lines, "cache invalidate");
    assert!(
        invalidate.contains("deps=1") && invalidate.contains("dropped=1"),
        "{invalidate}"
    );

    // Values never reach the log.
    cache
        .put("other", &"secret-value", &deps, None)
        .await
        .unwrap();
    let _: Option<String> = cache.get("other").await.unwrap();
    assert!(!captured.take().iter().any(|l| l.contains("secret-value")));
}

/// The `info` lines logged since the last call (message and fields, without the time stamp).
fn info_lines(captured: &Captured) -> Vec<String> {
    captured
        .take()
        .into_iter()
        .filter(|l| l.contains(" INFO "))
        .collect()
}

/// Waits (bounded, polled) until a captured line contains `message`; returns every line
/// captured meanwhile.
async fn wait_for(captured: &Captured, message: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        seen.extend(captured.take());
        if seen.iter().any(|l| l.contains(message)) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{message}` in {seen:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// An idle relay is silent at `info`: its poll loop logs at `trace`, and `info` is for state
/// changes only (started, consumer registered, flushed, delivering again after failures).
#[cfg(feature = "seaorm")]
#[tokio::test(flavor = "current_thread")]
async fn an_idle_relay_logs_nothing_at_info() {
    use matroska::outbox::{self, Outbox, OutboxDb, Relay, SqlConnection};
    use matroska::{ColumnDecoder, TableSpec};

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let db = OutboxDb::connect("sqlite::memory:").await.unwrap();
    db.execute_sql("CREATE TABLE t1 (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    db.execute_sql("CREATE TABLE t2 (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let specs: Vec<TableSpec> = ["t1", "t2"]
        .into_iter()
        .map(|t| TableSpec::new(t, t).key("id", ColumnDecoder::of::<i64>()))
        .collect();
    outbox::install(&db, &Outbox::default(), &specs)
        .await
        .unwrap();
    // The install's own lines (installed; triggers that were missing) are not the relay's.
    captured.take();
    let mut builder = Relay::builder(db.clone(), Cache::memory())
        .poll_interval(std::time::Duration::from_millis(1));
    for spec in specs {
        builder = builder.watch(spec);
    }
    let handle = builder.build().start().await.unwrap();
    let started = wait_for(&captured, "relay started").await;
    let info: Vec<&String> = started.iter().filter(|l| l.contains(" INFO ")).collect();
    // One line per state change: not one per flushed table.
    for message in [
        "new outbox consumer",
        "outbox consumer flushed its cache",
        "matroska outbox relay started",
    ] {
        assert_eq!(
            info.iter().filter(|l| l.contains(message)).count(),
            1,
            "one `{message}` in {info:#?}"
        );
    }
    assert_eq!(info.len(), 3, "{info:#?}");

    // Idle polls: many, none at `info`.
    let mut polls = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while polls < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not poll"
        );
        let lines = captured.take();
        polls += lines.iter().filter(|l| l.contains("outbox poll")).count();
        let info: Vec<&String> = lines.iter().filter(|l| l.contains(" INFO ")).collect();
        assert!(info.is_empty(), "an idle relay logged at info: {info:#?}");
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("outbox poll") || l.contains("TRACE")),
            "{lines:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // A failure is a warning; delivering again is one `info` line.
    db.execute_sql("ALTER TABLE matroska_outbox RENAME TO matroska_outbox_away")
        .await
        .unwrap();
    wait_for(&captured, "outbox delivery failed").await;
    db.execute_sql("ALTER TABLE matroska_outbox_away RENAME TO matroska_outbox")
        .await
        .unwrap();
    let lines = wait_for(&captured, "delivering again").await;
    let info: Vec<&String> = lines.iter().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(info.len(), 1, "{info:#?}");
    assert!(info_lines(&captured).is_empty());
    handle.shutdown().await;
}

/// An entry an older release wrote under the prefix (another layout byte) reads as a miss
/// and logs one warning: mixing releases on one prefix is unsupported (ARCHITECTURE.md
/// "Rolling deploys"), and this is where a newer release can see an older one at work.
#[tokio::test(flavor = "current_thread")]
async fn an_entry_written_by_an_older_release_warns_once() {
    use matroska::backend::Backend;
    use matroska::backend::redis::{RedisBackend, RedisConfig};
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let prefix = format!(
        "older_release_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let backend = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379", &prefix))
        .await
        .unwrap();
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // 0xB6: the layout before entries recorded the clock's owner.
    for key in ["a", "b"] {
        let _: () = redis::cmd("SET")
            .arg(backend.entry_key(key))
            .arg(b"\xB60:;v".as_slice())
            .arg("EX")
            .arg(60)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(backend.get(key).await.unwrap().is_none(), "{key}");
    }
    let warnings: Vec<String> = captured
        .take()
        .into_iter()
        .filter(|l| l.contains("older matroska release"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("layout=0xB6"), "{}", warnings[0]);
}
