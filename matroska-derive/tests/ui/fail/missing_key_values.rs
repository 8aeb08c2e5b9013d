//! A type without `ToValue` reached by hand rather than through the derive — as a key (Diesel's
//! cached `find`, a composite key) or a column decoder of a hand-written `TableSpec` — names
//! the features that provide it too. A stand-in for `uuid::Uuid`: these cases build the facade
//! with `seaorm`, which turns its `uuid` and `chrono` features on, so the real type would
//! compile here.

use matroska::{ColumnDecoder, ToKeyValues};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Uuid([u8; 16]);

/// What `find` asks of its key.
fn key(key: impl ToKeyValues) -> usize {
    key.to_key_values().len()
}

fn main() {
    let id = Uuid([0; 16]);
    key(id.clone());
    key((1, id));
    let _ = ColumnDecoder::of::<Uuid>();
}
