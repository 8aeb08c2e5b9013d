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

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Str(v.clone())
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

impl<T: Clone + Into<Value>> From<&T> for Value
where
    T: IntoValueByRef,
{
    fn from(v: &T) -> Self {
        v.clone().into()
    }
}

/// Marker for the types whose references convert into a [`Value`] by cloning
/// (kept explicit so `&str`/`&String` keep their own impls).
pub trait IntoValueByRef {}
macro_rules! by_ref {
    ($($t:ty),*) => {$( impl IntoValueByRef for $t {} )*};
}
by_ref!(
    i8, i16, i32, i64, u8, u16, u32, u64, isize, usize, bool, f32, f64
);
impl<T: IntoValueByRef> IntoValueByRef for Option<T> {}
