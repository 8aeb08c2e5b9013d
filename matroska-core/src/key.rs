//! Injective text encoding shared by dependencies and values.
//!
//! Every variable-length part is written as `<byte length>:<bytes>`. A length prefix makes
//! each part self-delimiting whatever it contains (`:`, `&`, `=`, `%`, NUL, unicode, the
//! empty string), so a sequence of parts decodes one way only: two different inputs can
//! never produce the same key.

/// Appends `s` as `<len>:<s>`.
pub(crate) fn push_len_prefixed(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(out, "{}:", s.len());
    out.push_str(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_separates_parts() {
        let mut a = String::new();
        push_len_prefixed(&mut a, "a:1");
        push_len_prefixed(&mut a, "");
        let mut b = String::new();
        push_len_prefixed(&mut b, "a");
        push_len_prefixed(&mut b, "1");
        assert_eq!(a, "3:a:10:");
        assert_ne!(a, b);
    }
}
