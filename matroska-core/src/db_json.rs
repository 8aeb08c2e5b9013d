//! Column values as a database's JSON functions write them, turned back into [`Value`]s.
//!
//! A change recorded by a database trigger (PostgreSQL `to_jsonb`, MySQL/MariaDB
//! `JSON_OBJECT`, SQLite `json_object`) carries each column as JSON, and each database writes
//! the same column differently: a boolean is `true` on PostgreSQL and `1` on MySQL and SQLite,
//! a timestamp is `"2026-11-25T10:00:00+01:00"` on PostgreSQL and `"2026-11-25 09:00:00.000000"`
//! on MariaDB, a UUID may be text or (SQLite, MariaDB) bytes. [`FromDbJson`] decodes such a JSON
//! value into exactly the [`Value`] that [`ToValue`](crate::ToValue) gives for the model field
//! of that type, so a dependency computed from the database's record equals the one a cached
//! query computed from the loaded model.
//!
//! Bytes are written by matroska's triggers as `{"hex": "00FF"}` (SQLite, MySQL) or as
//! PostgreSQL's `"\\x00ff"`; both decode.

use serde_json::Value as Json;

use crate::value::{ToValue, Value};

/// Decodes a column's JSON form, as a database trigger records it, into the [`Value`] of a
/// field of this type (each database writes a column its own way: a boolean is `true` on
/// PostgreSQL and `1` on MySQL and SQLite).
///
/// ```
/// use matroska_core::{FromDbJson, ToValue};
/// use serde_json::json;
///
/// // MySQL and SQLite write booleans as numbers.
/// assert_eq!(bool::from_db_json(&json!(1)).unwrap(), true.to_value());
/// assert_eq!(<Option<i32>>::from_db_json(&json!(null)).unwrap(), None::<i32>.to_value());
/// assert!(u8::from_db_json(&json!(300)).is_err());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no decoder from a database's JSON: it does not implement `FromDbJson`",
    note = "for `uuid::Uuid` enable the `uuid` feature of `matroska`, for chrono dates and times its `chrono` feature: `matroska = {{ version = \"0.1\", features = [\"uuid\", \"chrono\"] }}`"
)]
pub trait FromDbJson {
    /// The value of a field of this type that the database wrote as `json`.
    ///
    /// # Errors
    /// A message saying why `json` cannot be a value of this type.
    fn from_db_json(json: &Json) -> Result<Value, String>;

    /// Whether databases may store this type as bytes (`Vec<u8>`, and UUIDs on MySQL and
    /// SQLite): the triggers then record the column as `{"hex": ..}`, since MySQL's
    /// `JSON_OBJECT` cannot hold raw bytes.
    const BYTES: bool = false;
}

/// A decoder of one column's JSON, as [`FromDbJson::from_db_json`] of the field's type.
pub type DecodeFn = fn(&Json) -> Result<Value, String>;

/// How to record and decode one column: the field type's [`FromDbJson`].
///
/// ```
/// use matroska_core::ColumnDecoder;
/// let id = ColumnDecoder::of::<i64>();
/// assert!(!id.is_bytes());
/// ```
#[derive(Clone, Copy)]
pub struct ColumnDecoder {
    decode: DecodeFn,
    bytes: bool,
    /// [`ColumnDecoder::untyped`]: the field's type is unknown, so a value bound in a query
    /// cannot be shown to equal the field's [`ToValue`](crate::ToValue).
    untyped: bool,
}

impl ColumnDecoder {
    /// The decoder of a field of type `T`.
    pub fn of<T: FromDbJson + ?Sized>() -> Self {
        ColumnDecoder {
            decode: T::from_db_json,
            bytes: T::BYTES,
            untyped: false,
        }
    }

    /// The decoder for a field type without [`FromDbJson`]: the JSON's own shape
    /// ([`decode_untyped`]).
    pub fn untyped() -> Self {
        ColumnDecoder {
            decode: decode_untyped,
            bytes: false,
            untyped: true,
        }
    }

    /// Decodes a column's JSON.
    ///
    /// # Errors
    /// As [`FromDbJson::from_db_json`].
    pub fn decode(&self, json: &Json) -> Result<Value, String> {
        (self.decode)(json)
    }

    /// Whether the column may hold bytes (see [`FromDbJson::BYTES`]).
    pub fn is_bytes(&self) -> bool {
        self.bytes
    }

    /// Whether this is [`ColumnDecoder::untyped`] (the field type has no [`FromDbJson`]).
    pub fn is_untyped(&self) -> bool {
        self.untyped
    }
}

impl std::fmt::Debug for ColumnDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnDecoder")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

fn unexpected(ty: &str, json: &Json) -> String {
    let mut text = json.to_string();
    if text.len() > 64 {
        let mut end = 64;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("expected {ty}, found {text}")
}

/// A JSON number or numeric string as an integer, if it is one.
fn integer(json: &Json) -> Option<i128> {
    match json {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                // MySQL writes DECIMAL columns as `1.0`; a whole number is still an integer.
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i128)
            }),
        Json::String(s) => s.trim().parse().ok(),
        Json::Bool(b) => Some(i128::from(*b)),
        _ => None,
    }
}

macro_rules! from_db_json_int {
    ($($t:ty),*) => {$(
        impl FromDbJson for $t {
            fn from_db_json(json: &Json) -> Result<Value, String> {
                integer(json)
                    .and_then(|i| <$t>::try_from(i).ok())
                    .map(|i| i.to_value())
                    .ok_or_else(|| unexpected(stringify!($t), json))
            }
        }
    )*};
}
from_db_json_int!(i8, i16, i32, i64, i128, u8, u16, u32, u64, isize, usize);

impl FromDbJson for u128 {
    fn from_db_json(json: &Json) -> Result<Value, String> {
        if let Json::String(s) = json
            && let Ok(u) = s.trim().parse::<u128>()
        {
            return Ok(u.to_value());
        }
        integer(json)
            .and_then(|i| u128::try_from(i).ok())
            .map(|u| u.to_value())
            .ok_or_else(|| unexpected("u128", json))
    }
}

impl FromDbJson for bool {
    fn from_db_json(json: &Json) -> Result<Value, String> {
        let b = match json {
            Json::Bool(b) => Some(*b),
            Json::Number(_) => integer(json).map(|i| i != 0),
            Json::String(s) => match s.trim() {
                "t" | "true" | "TRUE" | "1" | "y" | "yes" | "on" => Some(true),
                "f" | "false" | "FALSE" | "0" | "n" | "no" | "off" => Some(false),
                _ => None,
            },
            _ => None,
        };
        b.map(Value::Bool)
            .ok_or_else(|| unexpected("a boolean", json))
    }
}

fn float(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        // PostgreSQL writes non-finite floats as strings.
        Json::String(s) => match s.trim() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

impl FromDbJson for f64 {
    fn from_db_json(json: &Json) -> Result<Value, String> {
        float(json)
            .map(|f| f.to_value())
            .ok_or_else(|| unexpected("a float", json))
    }
}

impl FromDbJson for f32 {
    fn from_db_json(json: &Json) -> Result<Value, String> {
        // Through `f32`, as the model's field holds it: a REAL column's 0.1 is not 0.1_f64.
        #[allow(clippy::cast_possible_truncation)]
        float(json)
            .map(|f| (f as f32).to_value())
            .ok_or_else(|| unexpected("a float", json))
    }
}

impl FromDbJson for String {
    fn from_db_json(json: &Json) -> Result<Value, String> {
        match json {
            Json::String(s) => Ok(Value::Str(s.clone())),
            // A text column never comes as a number from a trigger, but a column whose
            // model type is `String` may be numeric in the database (an enum as an integer).
            Json::Number(n) => Ok(Value::Str(n.to_string())),
            _ => Err(unexpected("a string", json)),
        }
    }
}

/// Bytes from `{"hex": ".."}` (matroska's triggers), PostgreSQL's `"\\x.."`, or a JSON array.
fn bytes(json: &Json) -> Option<Vec<u8>> {
    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }
    match json {
        Json::Object(map) => map.get("hex")?.as_str().and_then(unhex),
        Json::String(s) => unhex(s.strip_prefix("\\x")?),
        Json::Array(items) => items
            .iter()
            .map(|i| i.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        _ => None,
    }
}

impl FromDbJson for Vec<u8> {
    const BYTES: bool = true;

    fn from_db_json(json: &Json) -> Result<Value, String> {
        bytes(json)
            .map(Value::Bytes)
            .ok_or_else(|| unexpected("bytes", json))
    }
}

impl<T: FromDbJson> FromDbJson for Option<T> {
    const BYTES: bool = T::BYTES;

    fn from_db_json(json: &Json) -> Result<Value, String> {
        match json {
            Json::Null => Ok(Value::Null),
            other => T::from_db_json(other),
        }
    }
}

impl<T: FromDbJson + ?Sized> FromDbJson for Box<T> {
    const BYTES: bool = T::BYTES;

    fn from_db_json(json: &Json) -> Result<Value, String> {
        T::from_db_json(json)
    }
}

/// The decoder for a column whose field type has no [`FromDbJson`]: the JSON value's own
/// shape (number, string, boolean, null). Right for the common newtypes over integers and
/// strings; a type whose [`ToValue`](crate::ToValue) does something else needs its own
/// [`FromDbJson`].
///
/// # Errors
/// Arrays and objects.
pub fn decode_untyped(json: &Json) -> Result<Value, String> {
    match json {
        Json::Null => Ok(Value::Null),
        Json::Bool(b) => Ok(Value::Bool(*b)),
        Json::Number(_) => Ok(integer(json).map_or_else(
            || Value::float(json.as_f64().unwrap_or(f64::NAN)),
            Value::Int,
        )),
        Json::String(s) => Ok(Value::Str(s.clone())),
        other => Err(unexpected("a scalar", other)),
    }
}

#[cfg(feature = "chrono")]
mod chrono_json {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

    use super::{FromDbJson, Json, Value, unexpected};
    use crate::value::ToValue;

    fn text<'a>(json: &'a Json, ty: &str) -> Result<&'a str, String> {
        json.as_str()
            .map(str::trim)
            .ok_or_else(|| unexpected(ty, json))
    }

    /// A date-time with an offset, in the forms PostgreSQL, MySQL, SQLite (and sqlx writing
    /// into SQLite) use; `None` when the text carries no offset.
    fn with_offset(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.to_utc());
        }
        for format in [
            "%Y-%m-%d %H:%M:%S%.f%:z",
            "%Y-%m-%d %H:%M:%S%.f %:z",
            "%Y-%m-%d %H:%M:%S%.f%#z",
            "%Y-%m-%dT%H:%M:%S%.f%#z",
            "%Y-%m-%d %H:%M:%S%.f %#z",
        ] {
            if let Ok(t) = DateTime::parse_from_str(s, format) {
                return Some(t.to_utc());
            }
        }
        s.strip_suffix(" UTC")
            .or_else(|| s.strip_suffix('Z'))
            .and_then(naive)
            .map(|n| n.and_utc())
    }

    fn naive(s: &str) -> Option<NaiveDateTime> {
        [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    }

    impl FromDbJson for NaiveDate {
        fn from_db_json(json: &Json) -> Result<Value, String> {
            let s = text(json, "a date")?;
            let day = s.get(..10).unwrap_or(s);
            NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map(|d| d.to_value())
                .map_err(|_| unexpected("a date", json))
        }
    }

    impl FromDbJson for NaiveTime {
        fn from_db_json(json: &Json) -> Result<Value, String> {
            let s = text(json, "a time")?;
            NaiveTime::parse_from_str(s, "%H:%M:%S%.f")
                .map(|t| t.to_value())
                .map_err(|_| unexpected("a time", json))
        }
    }

    impl FromDbJson for NaiveDateTime {
        fn from_db_json(json: &Json) -> Result<Value, String> {
            let s = text(json, "a date-time")?;
            naive(s)
                .or_else(|| with_offset(s).map(|t| t.naive_utc()))
                .map(|t| t.to_value())
                .ok_or_else(|| unexpected("a date-time", json))
        }
    }

    /// Any `DateTime<Tz>`: its [`ToValue`] is the UTC instant, so the zone does not matter. A
    /// text without an offset (MySQL `TIMESTAMP`, written in the session's zone, which sqlx
    /// sets to UTC) is read as UTC.
    impl<Tz: chrono::TimeZone> FromDbJson for DateTime<Tz> {
        fn from_db_json(json: &Json) -> Result<Value, String> {
            let s = text(json, "a timestamp")?;
            with_offset(s)
                .or_else(|| naive(s).map(|n| n.and_utc()))
                .map(|t| t.to_value())
                .ok_or_else(|| unexpected("a timestamp", json))
        }
    }
}

#[cfg(feature = "uuid")]
impl FromDbJson for uuid::Uuid {
    const BYTES: bool = true;

    fn from_db_json(json: &Json) -> Result<Value, String> {
        let parsed = match json {
            Json::String(s) => uuid::Uuid::parse_str(s.trim()).ok(),
            other => bytes(other).and_then(|b| uuid::Uuid::from_slice(&b).ok()),
        };
        parsed
            .map(|u| u.to_value())
            .ok_or_else(|| unexpected("a UUID", json))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integers_of_every_database_form() {
        for json in [json!(7), json!("7"), json!(7.0)] {
            assert_eq!(i32::from_db_json(&json).unwrap(), 7_i32.to_value());
        }
        assert!(i8::from_db_json(&json!(128)).is_err());
        assert!(u32::from_db_json(&json!(-1)).is_err());
        assert!(i64::from_db_json(&json!(1.5)).is_err());
        assert_eq!(
            u64::from_db_json(&json!(u64::MAX)).unwrap(),
            u64::MAX.to_value()
        );
    }

    #[test]
    fn booleans_as_numbers_and_text() {
        for (json, b) in [
            (json!(true), true),
            (json!(0), false),
            (json!(1), true),
            (json!("t"), true),
            (json!("f"), false),
        ] {
            assert_eq!(bool::from_db_json(&json).unwrap(), b.to_value());
        }
        assert!(bool::from_db_json(&json!("maybe")).is_err());
    }

    #[test]
    fn floats_keep_the_field_width() {
        assert_eq!(f32::from_db_json(&json!(0.1)).unwrap(), 0.1_f32.to_value());
        assert_ne!(f32::from_db_json(&json!(0.1)).unwrap(), 0.1_f64.to_value());
        assert_eq!(
            f64::from_db_json(&json!("NaN")).unwrap(),
            f64::NAN.to_value()
        );
    }

    #[test]
    fn bytes_in_each_form() {
        let want = Value::Bytes(vec![0, 255]);
        assert_eq!(
            Vec::<u8>::from_db_json(&json!({"hex": "00FF"})).unwrap(),
            want
        );
        assert_eq!(Vec::<u8>::from_db_json(&json!("\\x00ff")).unwrap(), want);
        assert!(Vec::<u8>::from_db_json(&json!("00ff")).is_err());
    }

    #[test]
    fn untyped_follows_the_json_shape() {
        assert_eq!(decode_untyped(&json!(3)).unwrap(), Value::Int(3));
        assert_eq!(decode_untyped(&json!("a")).unwrap(), Value::from("a"));
        assert!(decode_untyped(&json!([1])).is_err());
    }

    #[cfg(feature = "chrono")]
    #[test]
    fn timestamps_of_every_database_form() {
        use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
        let instant = Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap()
            + chrono::Duration::microseconds(123_456);
        let want = instant.to_value();
        for text in [
            "2026-11-25T10:00:00.123456+01:00",
            "2026-11-25 09:00:00.123456",
            "2026-11-25 09:00:00.123456+00:00",
            "2026-11-25T09:00:00.123456Z",
            "2026-11-25 09:00:00.123456 UTC",
        ] {
            assert_eq!(
                DateTime::<Utc>::from_db_json(&json!(text)).unwrap(),
                want,
                "{text}"
            );
        }
        let naive = instant.naive_utc();
        for text in ["2026-11-25T09:00:00.123456", "2026-11-25 09:00:00.123456"] {
            assert_eq!(
                NaiveDateTime::from_db_json(&json!(text)).unwrap(),
                naive.to_value()
            );
        }
        let whole = Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap();
        assert_eq!(
            DateTime::<Utc>::from_db_json(&json!("2026-11-25 09:00:00.000000")).unwrap(),
            whole.to_value()
        );
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuids_as_text_and_bytes() {
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let want = id.to_value();
        assert_eq!(
            uuid::Uuid::from_db_json(&json!(id.to_string())).unwrap(),
            want
        );
        let hex: String = id.as_bytes().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(
            uuid::Uuid::from_db_json(&json!({ "hex": hex })).unwrap(),
            want
        );
    }
}
