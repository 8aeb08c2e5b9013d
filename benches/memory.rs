//! The in-memory backend against the bare moka cache it is built on.

mod common;

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use matroska::Cache;
use matroska::backend::memory::MemoryBackend;
use matroska::backend::{Backend, PutRequest};

use common::{Article, small};

/// Polls a future that completes without waiting (the memory backend never waits) once, so
/// neither side pays for an executor.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory backend never waits"),
    }
}

fn get(c: &mut Criterion) {
    let value = Bytes::from(matroska::Codec::Json.encode("k", &small(), 0).unwrap());
    let keys: Vec<String> = (0..10_000).map(|i| format!("articles:{i}")).collect();

    let moka: moka::sync::Cache<Arc<str>, Bytes> =
        moka::sync::Cache::builder().max_capacity(100_000).build();
    let backend = MemoryBackend::default();
    let deps: Vec<String> = common::deps(5, 0).iter().map(|d| d.encode()).collect();
    for k in &keys {
        moka.insert(Arc::from(k.as_str()), value.clone());
        ready(backend.put(PutRequest::new(
            k,
            value.clone(),
            &deps,
            Duration::from_secs(600),
        )))
        .unwrap();
    }
    let cache = Cache::builder(backend.clone()).build().unwrap();

    let mut g = c.benchmark_group("memory/get hit");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("bare moka get", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            moka.get(keys[i].as_str())
        })
    });
    g.bench_function("MemoryBackend get", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            ready(backend.get(&keys[i])).unwrap()
        })
    });
    g.bench_function("bare moka get + JSON decode", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let bytes = moka.get(keys[i].as_str()).unwrap();
            serde_json::from_slice::<Article>(&bytes[7..]).unwrap()
        })
    });
    g.bench_function("Cache::get (decoded)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            ready(cache.get::<Article>(&keys[i])).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("memory/insert");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare moka insert", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            moka.insert(Arc::from(keys[i].as_str()), value.clone());
        })
    });
    g.bench_function("MemoryBackend put, 5 deps", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            ready(backend.put(PutRequest::new(
                &keys[i],
                value.clone(),
                &deps,
                Duration::from_secs(600),
            )))
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, get);
criterion_main!(benches);
