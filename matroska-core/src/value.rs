//! Typed values that appear in primary keys and scope conditions.

use std::fmt;

/// A typed value of a primary key column or a scope field.
///
/// Values are typed so that `true` and `"true"` (or `1` and `"1"`) never stand for the same
/// condition. All integer widths map to [`Value::Int`], so a column read as `i32` and a filter
/// written with an `i64` literal agree.
///
/// ```
/// use matroska_core::Value;
/// assert_eq!(Value::from(5_i32), Value::from(5_u64));
/// assert_ne!(Value::from(true), Value::from("true"));
/// assert_eq!(Value::from(None::<i32>), Value::Null);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Value {
    /// SQL `NULL` / `None`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer, widened.
    Int(i128),
    /// A float, stored by its bit pattern (`-0.0` is folded into `0.0`, NaNs into one NaN).
    Float(u64),
    /// A string.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A value of another type (a UUID, a date, a decimal...), given as its type name and a
    /// canonical text form. Two values are equal when both parts are.
    Typed {
        /// The type name, e.g. `"uuid"` or `"date"`.
        ty: String,
        /// The canonical text form of the value.
        repr: String,
    },
}

impl Value {
    /// A value of another type, given as a type name and its canonical text form.
    ///
    /// ```
    /// use matroska_core::Value;
    /// let day = Value::typed("date", "2026-11-25");
    /// assert_ne!(day, Value::from("2026-11-25"));
    /// ```
    pub fn typed(ty: impl Into<String>, repr: impl Into<String>) -> Self {
        Value::Typed {
            ty: ty.into(),
            repr: repr.into(),
        }
    }

    /// A float value; `-0.0` equals `0.0` and all NaNs are one value.
    pub fn float(f: f64) -> Self {
        let canonical = if f == 0.0 {
            0.0_f64
        } else if f.is_nan() {
            f64::NAN
        } else {
            f
        };
        Value::Float(canonical.to_bits())
    }

    /// Appends the injective encoding of this value to `out`.
    ///
    /// Every variant starts with its own tag character and is self-delimiting (lengths are
    /// written before variable-size parts), so a concatenation of encodings decodes one way.
    pub(crate) fn encode_into(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = match self {
            Value::Null => write!(out, "n"),
            Value::Bool(true) => write!(out, "t"),
            Value::Bool(false) => write!(out, "f"),
            Value::Int(i) => write!(out, "i{i};"),
            Value::Float(bits) => write!(out, "d{bits:x};"),
            Value::Str(s) => {
                out.push('s');
                crate::key::push_len_prefixed(out, s);
                Ok(())
            }
            Value::Bytes(b) => {
                let _ = write!(out, "b{}:", b.len());
                for byte in b {
                    let _ = write!(out, "{byte:02x}");
                }
                Ok(())
            }
            Value::Typed { ty, repr } => {
                out.push('x');
                crate::key::push_len_prefixed(out, ty);
                crate::key::push_len_prefixed(out, repr);
                Ok(())
            }
        };
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(bits) => write!(f, "{}", f64::from_bits(*bits)),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::Typed { ty, repr } => write!(f, "{ty}({repr})"),
        }
    }
}

macro_rules! int_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::Int(i128::from(v)) }
        }
    )*};
}
int_from!(i8, i16, i32, i64, u8, u16, u32, u64);

impl From<isize> for Value {
    fn from(v: isize) -> Self {
        // isize is at most 64 bits on every supported target.
        Value::Int(v as i128)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        // usize is at most 64 bits on every supported target.
        Value::Int(v as i128)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::float(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::float(f64::from(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Borrowed values convert through [`ToValue`]: `Value::from(&article.category)`,
/// `Value::from("fantasy")`.
impl<T: ToValue + ?Sized> From<&T> for Value {
    fn from(v: &T) -> Self {
        v.to_value()
    }
}

/// Converts a field's value into a [`Value`] without consuming it.
///
/// This is how `#[derive(CacheDeps)]` reads primary keys and scope fields, so a type used in
/// a `#[cache(key)]` field or a `#[scope(...)]` must implement it. Implemented for every
/// integer type, `bool`, `f32`/`f64`, `String`/`str`, `Vec<u8>`/`[u8]`, `Option<T>` (`None`
/// is [`Value::Null`]), references, [`Value`] itself, and behind features:
///
/// | feature | types | [`Value::Typed`] type name and text form |
/// |---|---|---|
/// | `chrono` | `NaiveDate` | `date`, `2026-11-25` |
/// | `chrono` | `NaiveTime` | `time`, `23:56:04`, `23:56:04.500` (a fraction of 3, 6 or 9 digits, when non-zero) |
/// | `chrono` | `NaiveDateTime` | `datetime`, `2026-11-25T23:56:04.500` |
/// | `chrono` | `DateTime<Tz>` | `timestamp`, the UTC instant: `2026-11-25T22:56:04.500Z` |
/// | `uuid` | `Uuid` | `uuid`, lower-case hyphenated |
///
/// A `DateTime` in any time zone converts to its UTC instant, so one moment written with
/// two offsets is one value, as it is for a `timestamptz` column.
///
/// For an application type (say a newtype id or a C-like enum), implement it by converting
/// to the value the database column holds:
///
/// ```
/// use matroska_core::{ToValue, Value};
///
/// struct UserId(i64);
/// impl ToValue for UserId {
///     fn to_value(&self) -> Value {
///         self.0.to_value()
///     }
/// }
/// assert_eq!(UserId(7).to_value(), Value::from(7));
/// ```
// A type from a crate whose matroska feature is off (uuid, chrono) would otherwise be reported
// as a bare unsatisfied bound at every field that uses it, never naming the feature.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key or scope value: it does not implement `ToValue`",
    label = "no `ToValue` for `{Self}`",
    note = "for `uuid::Uuid` enable the `uuid` feature of `matroska`, for chrono dates and times its `chrono` feature: `matroska = {{ version = \"0.1\", features = [\"uuid\", \"chrono\"] }}`",
    note = "for a type of your own, implement `ToValue` (see its docs)"
)]
pub trait ToValue {
    /// This value as a [`Value`].
    fn to_value(&self) -> Value;
}

/// The values of a primary key, in its columns' order: one [`ToValue`] for a single-column key,
/// a tuple of them (up to six) for a composite one, as ORMs take keys (`find((a, b))`).
///
/// ```
/// use matroska_core::{ToKeyValues, Value};
///
/// assert_eq!(7_i32.to_key_values(), [Value::from(7)]);
/// assert_eq!((7_i32, "en").to_key_values(), [Value::from(7), Value::from("en")]);
/// ```
// Through the blanket impl rustc reports this trait, not `ToValue`: name the features here too.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a primary key: a key is one `ToValue`, or a tuple of up to six",
    label = "not a key",
    note = "for `uuid::Uuid` enable the `uuid` feature of `matroska`, for chrono dates and times its `chrono` feature: `matroska = {{ version = \"0.1\", features = [\"uuid\", \"chrono\"] }}`",
    note = "for a type of your own, implement `ToValue` (see its docs)"
)]
pub trait ToKeyValues {
    /// The key's values, one per column.
    fn to_key_values(&self) -> Vec<Value>;
}

impl<T: ToValue + ?Sized> ToKeyValues for T {
    fn to_key_values(&self) -> Vec<Value> {
        vec![self.to_value()]
    }
}

// Tuples have no `ToValue` (and no other crate may give them one), so these do not overlap
// the single-value impl above.
macro_rules! tuple_key_values {
    ($($name:ident)+) => {
        impl<$($name: ToValue),+> ToKeyValues for ($($name,)+) {
            #[allow(non_snake_case)]
            fn to_key_values(&self) -> Vec<Value> {
                let ($($name,)+) = self;
                vec![$($name.to_value()),+]
            }
        }
    };
}
tuple_key_values!(A B);
tuple_key_values!(A B C);
tuple_key_values!(A B C D);
tuple_key_values!(A B C D E);
tuple_key_values!(A B C D E F);

macro_rules! to_value_via_from {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::from(*self)
            }
        }
    )*};
}
to_value_via_from!(
    i8, i16, i32, i64, u8, u16, u32, u64, isize, usize, bool, f32, f64
);

impl ToValue for i128 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for u128 {
    /// Values above `i128::MAX` cannot be widened into [`Value::Int`]; they are kept as
    /// [`Value::Typed`] `u128` with their decimal form, which no other value equals.
    fn to_value(&self) -> Value {
        match i128::try_from(*self) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::typed("u128", self.to_string()),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Str(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Bytes(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Bytes(self.clone())
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue + ?Sized> ToValue for Box<T> {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
mod chrono_values {
    //! Dates and times. The text forms are chrono's `Display` forms (with `T` between date and
    //! time), which are canonical: one value, one text (leap seconds included, as `:60`).

    use super::{ToValue, Value};

    impl ToValue for chrono::NaiveDate {
        fn to_value(&self) -> Value {
            Value::typed("date", self.to_string())
        }
    }

    impl ToValue for chrono::NaiveTime {
        fn to_value(&self) -> Value {
            Value::typed("time", self.to_string())
        }
    }

    impl ToValue for chrono::NaiveDateTime {
        fn to_value(&self) -> Value {
            Value::typed("datetime", format!("{}T{}", self.date(), self.time()))
        }
    }

    impl<Tz: chrono::TimeZone> ToValue for chrono::DateTime<Tz> {
        fn to_value(&self) -> Value {
            let utc = self.naive_utc();
            Value::typed("timestamp", format!("{}T{}Z", utc.date(), utc.time()))
        }
    }
}

#[cfg(feature = "uuid")]
#[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
impl ToValue for uuid::Uuid {
    fn to_value(&self) -> Value {
        Value::typed("uuid", self.hyphenated().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_and_owned_agree() {
        let s = String::from("fantasy");
        assert_eq!(Value::from(&s), Value::from("fantasy"));
        assert_eq!(s.to_value(), Value::from(s.clone()));
        assert_eq!(Some(3_u8).to_value(), Value::from(3_i64));
        assert_eq!(None::<String>.to_value(), Value::Null);
        assert_eq!((&&true).to_value(), Value::Bool(true));
        assert_eq!(vec![1_u8, 2].to_value(), Value::Bytes(vec![1, 2]));
        assert_eq!(
            u128::MAX.to_value(),
            Value::typed("u128", u128::MAX.to_string())
        );
        assert_eq!(7_u128.to_value(), Value::Int(7));
    }

    #[test]
    fn typed_values_differ_from_their_text() {
        assert_ne!(true.to_value(), "true".to_value());
        assert_ne!(1.to_value(), "1".to_value());
    }

    #[cfg(feature = "chrono")]
    #[test]
    fn chrono_values_are_canonical() {
        use chrono::{FixedOffset, NaiveDate, TimeZone, Utc};
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).expect("valid date");
        assert_eq!(day.to_value(), Value::typed("date", "2026-11-25"));
        let t = day.and_hms_milli_opt(23, 56, 4, 500).expect("valid time");
        assert_eq!(
            t.to_value(),
            Value::typed("datetime", "2026-11-25T23:56:04.500")
        );
        assert_eq!(t.time().to_value(), Value::typed("time", "23:56:04.500"));
        let paris = FixedOffset::east_opt(3600).expect("valid offset");
        let a = paris.from_local_datetime(&t).single().expect("unambiguous");
        let b = Utc.from_utc_datetime(&a.naive_utc());
        assert_eq!(a.to_value(), b.to_value());
        assert_eq!(
            a.to_value(),
            Value::typed("timestamp", "2026-11-25T22:56:04.500Z")
        );
        assert_ne!(t.to_value(), b.naive_utc().to_value());
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuids_are_lower_case_hyphenated() {
        let u = uuid::Uuid::from_u128(0xA1A2A3A4_B1B2_C1C2_D1D2_D3D4D5D6D7D8);
        assert_eq!(
            u.to_value(),
            Value::typed("uuid", "a1a2a3a4-b1b2-c1c2-d1d2-d3d4d5d6d7d8")
        );
    }
}
