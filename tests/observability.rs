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
