//! Serialization of cached values, with a header that turns a type change into a miss.
//!
//! Stored bytes are `MAGIC, LAYOUT, codec id, schema version (u32 LE), payload`. The header
//! costs seven bytes and lets a reader tell, before touching the payload, that the bytes were
//! written by another codec or for another schema version: that is a miss, never a panic or a
//! value of the wrong shape.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

const MAGIC: u8 = 0xA7;
const LAYOUT: u8 = 1;
const HEADER_LEN: usize = 7;

/// How values are serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON (`serde_json`): readable with `redis-cli`, the default.
    #[default]
    Json,
    /// MessagePack (`rmp-serde`): compact and faster; see BENCHMARKS.md.
    #[cfg(feature = "msgpack")]
    #[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
    MessagePack,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Json => 1,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => 2,
        }
    }

    /// Serializes `value` with a header naming this codec and `schema_version`.
    ///
    /// # Errors
    /// [`Error::Encode`] when serde fails (e.g. a map with non-string keys in JSON).
    ///
    /// ```
    /// use matroska_core::Codec;
    /// let bytes = Codec::Json.encode("k", &vec![1, 2, 3], 7).unwrap();
    /// let back: Vec<i32> = Codec::Json.decode(&bytes, 7).unwrap();
    /// assert_eq!(back, [1, 2, 3]);
    /// // Another schema version is a decode error, which the cache treats as a miss.
    /// assert!(Codec::Json.decode::<Vec<i32>>(&bytes, 8).is_err());
    /// ```
    pub fn encode<T: Serialize + ?Sized>(
        self,
        key: &str,
        value: &T,
        schema_version: u32,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[MAGIC, LAYOUT, self.id()]);
        out.extend_from_slice(&schema_version.to_le_bytes());
        let encoded = match self {
            Codec::Json => serde_json::to_writer(&mut out, value).map_err(|e| e.to_string()),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => {
                rmp_serde::encode::write_named(&mut out, value).map_err(|e| e.to_string())
            }
        };
        encoded.map_err(|message| Error::Encode {
            key: key.to_owned(),
            message,
        })?;
        Ok(out)
    }

    /// The schema version in the header of `bytes`, when they carry a matroska header.
    pub(crate) fn schema_version_of(bytes: &[u8]) -> Option<u32> {
        match bytes {
            [MAGIC, LAYOUT, _, a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// Decodes bytes written by [`Codec::encode`] with any codec this build knows.
    ///
    /// # Errors
    /// [`Error::Decode`] when the header is missing or names another schema version or an
    /// unknown codec, or the payload does not deserialize into `T`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8], schema_version: u32) -> Result<T> {
        let (header, payload) = bytes.split_at_checked(HEADER_LEN).ok_or_else(|| {
            Error::Decode(format!("{} bytes is too short for a header", bytes.len()))
        })?;
        if header[0] != MAGIC || header[1] != LAYOUT {
            return Err(Error::Decode(
                "not written by matroska (bad magic or layout)".into(),
            ));
        }
        let stored_version = u32::from_le_bytes([header[3], header[4], header[5], header[6]]);
        if stored_version != schema_version {
            return Err(Error::Decode(format!(
                "schema version {stored_version} stored, {schema_version} expected"
            )));
        }
        // The codec is read from the header, not from `self`: switching codecs in a running
        // fleet keeps reading what the other codec wrote.
        match header[2] {
            1 => serde_json::from_slice(payload).map_err(|e| Error::Decode(e.to_string())),
            #[cfg(feature = "msgpack")]
            2 => rmp_serde::from_slice(payload).map_err(|e| Error::Decode(e.to_string())),
            other => Err(Error::Decode(format!("unknown codec id {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Old {
        id: i32,
    }
    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct New {
        id: i32,
        title: String,
    }

    #[test]
    fn round_trip_and_changed_type_is_an_error() {
        let bytes = Codec::Json.encode("k", &Old { id: 1 }, 0).unwrap();
        assert_eq!(Codec::Json.decode::<Old>(&bytes, 0).unwrap(), Old { id: 1 });
        assert!(Codec::Json.decode::<New>(&bytes, 0).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xA7",
            b"hello world",
            b"\xA7\x01\x01\0\0\0\0{not json",
            b"\xA7\x01\x09\0\0\0\0[]",
        ] {
            assert!(
                Codec::Json.decode::<Vec<i32>>(bytes, 0).is_err(),
                "{bytes:?}"
            );
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn json_reader_reads_msgpack_bytes() {
        let bytes = Codec::MessagePack
            .encode(
                "k",
                &New {
                    id: 2,
                    title: "t".into(),
                },
                3,
            )
            .unwrap();
        let back: New = Codec::Json.decode(&bytes, 3).unwrap();
        assert_eq!(back.title, "t");
    }
}
