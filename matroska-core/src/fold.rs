//! Folding string values the way a column's collation compares them.
//!
//! MySQL's and MariaDB's default collations (`utf8mb4_general_ci`, `utf8mb4_unicode_ci`,
//! `uca1400_ai_ci`) compare case- and accent-insensitively and ignore trailing spaces;
//! PostgreSQL's `citext` ignores case. A list cached for `category = "Fantasy"` then holds the
//! rows stored as `"fantasy"` and `"FANTASY "`, and saving one of them must invalidate it: both
//! sides of a scope condition — the list's filter and the saved row's value — are folded
//! before they become a dependency.
//!
//! A fold must be **at least as coarse** as the collation: values the database considers
//! equal must fold to the same string. A coarser fold only costs extra misses (two lists that
//! share a folded value invalidate together); a finer one leaves stale entries.

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};

use unicode_normalization::UnicodeNormalization;

use crate::value::Value;

/// Scope fields whose column compares more loosely than their fold (found by a start-up
/// check in production mode): every write through them invalidates the whole scope.
static COARSE: RwLock<BTreeSet<(String, String)>> = RwLock::new(BTreeSet::new());

/// Marks `scope`'s `field` as compared more loosely by its column than its [`Fold`] folds:
/// from now on every write that invalidates a condition over it also invalidates the scope's
/// lists (`Scope::all`) — coarse, never stale. Start-up collation checks call it in production
/// mode; in development mode they report an error instead.
pub fn mark_coarse(scope: &str, field: &str) {
    COARSE
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((scope.to_owned(), field.to_owned()));
}

/// Whether [`mark_coarse`] marked `scope`'s `field`.
pub fn is_coarse(scope: &str, field: &str) -> bool {
    let coarse = COARSE.read().unwrap_or_else(PoisonError::into_inner);
    !coarse.is_empty() && coarse.contains(&(scope.to_owned(), field.to_owned()))
}

/// How a scope field's string values are folded before they become part of a dependency.
///
/// ```
/// use matroska_core::{Fold, Value};
///
/// let mysql = Fold::CI_AI;
/// assert_eq!(mysql.apply(Value::from("Crème Brûlée  ")), mysql.apply(Value::from("creme brulee")));
/// assert_ne!(Fold::CASE.apply(Value::from("é")), Fold::CASE.apply(Value::from("e")));
/// // Other values pass through.
/// assert_eq!(Fold::CI_AI.apply(Value::from(7)), Value::from(7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fold {
    /// Letter case does not matter (`"A" = "a"`).
    pub case: bool,
    /// Accents do not matter (`"é" = "e"`; compatibility decomposition, marks dropped).
    pub accents: bool,
    /// Trailing spaces do not matter (`PAD SPACE` collations).
    pub trailing_spaces: bool,
}

impl Fold {
    /// Binary comparison: nothing is folded.
    pub const EXACT: Fold = Fold {
        case: false,
        accents: false,
        trailing_spaces: false,
    };

    /// Case-insensitive (PostgreSQL `citext`).
    pub const CASE: Fold = Fold {
        case: true,
        accents: false,
        trailing_spaces: false,
    };

    /// Case- and accent-insensitive, trailing spaces ignored: MySQL's and MariaDB's `_ci`
    /// collations (the defaults).
    pub const CI_AI: Fold = Fold {
        case: true,
        accents: true,
        trailing_spaces: true,
    };

    /// Whether this fold changes anything.
    pub fn is_exact(&self) -> bool {
        *self == Fold::EXACT
    }

    /// Folds a string.
    pub fn text(&self, s: &str) -> String {
        let mut out: String = if self.accents {
            // UCA collations (`unicode_ci`, `uca1400_ai_ci`) also ignore what has no weight:
            // control characters and default-ignorable code points (zero-width spaces and
            // joiners, soft hyphens, variation selectors), measured on MariaDB 10.11. The
            // compatibility decomposition comes before the trailing spaces are trimmed, so
            // a trailing no-break space goes too.
            s.chars()
                .filter(|&c| !ignorable(c))
                .flat_map(base_letter)
                .collect::<String>()
                .nfkd()
                .filter(|c| !unicode_normalization::char::is_combining_mark(*c) && !ignorable(*c))
                .collect()
        } else {
            s.to_owned()
        };
        if self.trailing_spaces {
            out.truncate(out.trim_end_matches(' ').len());
        }
        if self.case {
            // `utf8mb4_general_ci` equates ß with s, `utf8mb4_unicode_ci` with ss: folding
            // all three to s is coarser than either (measured on MariaDB 10.11); and final
            // sigma with sigma, which lowercasing keeps apart.
            out = out
                .to_lowercase()
                .replace('ß', "s")
                .replace("ss", "s")
                .replace('ς', "σ");
        }
        out
    }

    /// Folds a value: strings are folded, other values pass through.
    pub fn apply(&self, value: Value) -> Value {
        match value {
            Value::Str(s) if !self.is_exact() => Value::Str(self.text(&s)),
            other => other,
        }
    }
}

/// Characters UCA collations give no weight: controls and the default-ignorable code points
/// (Unicode's `Default_Ignorable_Code_Point`, its main ranges).
fn ignorable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// The letters with no canonical decomposition that accent-insensitive collations still
/// equate with a base letter (`ł` = `l` under `uca1400_ai_ci`, `ı` = `i` under
/// `utf8mb4_general_ci`, `œ` = `oe` under `utf8mb4_unicode_ci`; measured on MariaDB 10.11):
/// NFKD leaves them alone, so they are spelt out here. The list is not the guarantee — the
/// start-up collation check asks the database — it only makes the common collations pass.
fn base_letter(c: char) -> std::iter::Take<std::array::IntoIter<char, 2>> {
    let (pair, len) = match c {
        'ı' => (['i', ' '], 1),
        'ł' | 'ŀ' => (['l', ' '], 1),
        'Ł' | 'Ŀ' => (['L', ' '], 1),
        'ø' => (['o', ' '], 1),
        'Ø' => (['O', ' '], 1),
        'đ' | 'ð' => (['d', ' '], 1),
        'Đ' | 'Ð' => (['D', ' '], 1),
        'ħ' => (['h', ' '], 1),
        'Ħ' => (['H', ' '], 1),
        'œ' => (['o', 'e'], 2),
        'Œ' => (['O', 'E'], 2),
        'æ' => (['a', 'e'], 2),
        'Æ' => (['A', 'E'], 2),
        other => ([other, ' '], 1),
    };
    pair.into_iter().take(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What UCA collations give no weight (measured on MariaDB 10.11's `utf8mb4_unicode_ci`
    /// by the review of the automatic check) folds away under `CI_AI`.
    #[test]
    fn ci_ai_drops_what_uca_collations_ignore() {
        let f = Fold::CI_AI;
        for equal in [
            "Fantasy\u{A0}",
            "Fan\u{200B}tasy",
            "Fan\u{200D}tasy",
            "Fan\u{AD}tasy",
            "Fan\u{1}tasy",
            "FANTASY  ",
        ] {
            assert_eq!(f.text(equal), f.text("fantasy"), "{equal:?}");
        }
        assert_eq!(f.text("ς"), f.text("Σ"));
        assert_ne!(f.text("fan tasy"), f.text("fantasy"));
    }

    #[test]
    fn ci_ai_equates_what_mysql_equates() {
        let f = Fold::CI_AI;
        for (a, b) in [
            ("Fantasy", "fantasy"),
            ("fantasy  ", "FANTASY"),
            ("Élan", "elan"),
            ("straße", "STRASSE"),
            ("straße", "strase"),
            ("ﬁ", "fi"),
            ("ı", "i"),
            ("İ", "i"),
            ("Łódź", "lodz"),
            ("Œuvre", "oeuvre"),
            ("Æ", "ae"),
            ("Øre", "ore"),
            ("Đ", "d"),
            ("Ａ", "a"),
        ] {
            assert_eq!(f.text(a), f.text(b), "{a} vs {b}");
        }
        assert_ne!(f.text("a b"), f.text("ab"));
        assert_ne!(f.text(" a"), f.text("a"), "leading spaces count");
    }

    #[test]
    fn exact_changes_nothing() {
        assert_eq!(Fold::EXACT.text("Élan "), "Élan ");
        assert!(Fold::default().is_exact());
    }
}
