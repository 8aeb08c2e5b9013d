//! A field type without `ToValue` (here a stand-in for `uuid::Uuid` with matroska's `uuid`
//! feature off) is reported at the field, and the error names the features that provide it.

use matroska::CacheDeps;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Uuid([u8; 16]);

#[derive(CacheDeps)]
#[scope(owner)]
struct Document {
    id: Uuid,
    owner: Uuid,
}

fn main() {}
