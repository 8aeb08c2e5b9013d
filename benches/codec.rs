//! Encode + decode of a typical cached list (50 articles), per codec.

mod common;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use matroska::Codec;

use common::{Article, articles};

fn codecs(c: &mut Criterion) {
    let list = articles(50);
    let mut g = c.benchmark_group("codec/50 articles encode+decode");
    let offered = [
        Some(("json", Codec::Json)),
        #[cfg(feature = "msgpack")]
        Some(("msgpack", Codec::MessagePack)),
    ];
    for (name, codec) in offered.into_iter().flatten() {
        let size = codec.encode("k", &list, 0).unwrap().len();
        println!("codec {name}: {size} bytes for 50 articles");
        g.bench_with_input(BenchmarkId::from_parameter(name), &codec, |b, codec| {
            b.iter(|| {
                let bytes = codec.encode("k", &list, 0).unwrap();
                codec.decode::<Vec<Article>>(&bytes, 0).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
