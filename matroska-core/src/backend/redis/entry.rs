//! The entry format `put.lua` writes: the dependencies, the stamps they had when the entry
//! was stored, the owner of the clock it was stored under, then the value.

use std::io::Write as _;

/// First byte of an entry written by this layout (`put.lua`); anything else is not ours
/// (0xB5 was the layout before stamps were joined by `,`, 0xB6 the one before entries
/// recorded the clock's owner: both read as misses, so an entry restored from a snapshot
/// taken before this layout is never served).
pub(super) const ENTRY_MAGIC: u8 = 0xB7;

/// First bytes of the entries older releases wrote (see [`ENTRY_MAGIC`]).
const OLDER_MAGICS: [u8; 2] = [0xB5, 0xB6];

/// Logs once per process when `entry` (which [`Envelope::parse`] refused) was written by an
/// older release: mixing releases on one prefix is not supported (ARCHITECTURE.md "Rolling
/// deploys": an older release's put can record a stamp this one left pending and serve its
/// value to the older release's readers), and this is the one place a newer release can see
/// an older one at work. A snapshot from before an upgrade shows it too, once.
pub(super) fn note_if_older_release(key: &str, entry: &[u8]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Some(&magic) = entry.first()
        && OLDER_MAGICS.contains(&magic)
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            key,
            layout = format_args!("{magic:#04X}"),
            "found a cache entry written by an older matroska release under this prefix (read \
             as a miss). If that release still runs on this prefix, its readers can be served \
             stale values: do not mix releases on one prefix; deploy blue/green with a new \
             prefix, or stop the old release first"
        );
    }
}

/// An entry as `put.lua` writes it: the header ([`entry_header`]: `0xB7`, `n:`, then per
/// dependency `<len>:<dependency>`), the recorded stamps joined by `,`, `;`, the owner of the
/// clock when the entry was stored (the first 16 characters of a server's run id; see
/// `incarnation.rs`), `;`, then the value.
#[derive(Debug)]
pub(super) struct Envelope<'a> {
    pub(super) deps: Vec<(&'a [u8], &'a [u8])>,
    /// The clock's owner when the entry was stored: served only while the clock still has it.
    pub(super) owner: &'a [u8],
    /// Where the value starts.
    pub(super) value_at: usize,
}

impl<'a> Envelope<'a> {
    /// `None` for bytes this layout did not write (another version, another writer).
    pub(super) fn parse(bytes: &'a [u8]) -> Option<Self> {
        fn number(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
            let digits = bytes.get(at..)?.iter().take(11).position(|&b| b == b':')?;
            let text = std::str::from_utf8(&bytes[at..at + digits]).ok()?;
            Some((text.parse().ok()?, at + digits + 1))
        }
        if bytes.first() != Some(&ENTRY_MAGIC) {
            return None;
        }
        let (n, mut at) = number(bytes, 1)?;
        // Bounded by the bytes at hand, not by what the header claims.
        let mut deps = Vec::with_capacity(n.min(bytes.len() / 4));
        for _ in 0..n {
            let (len, next) = number(bytes, at)?;
            let end = next.checked_add(len)?;
            deps.push((bytes.get(next..end)?, &b""[..]));
            at = end;
        }
        // Stamps hold neither `,` nor `;` (the scripts write them), so the first `;` ends them.
        let stamps_end = at + bytes.get(at..)?.iter().position(|&b| b == b';')?;
        let stamps = &bytes[at..stamps_end];
        if n == 0 {
            if !stamps.is_empty() {
                return None;
            }
        } else {
            let mut recorded = stamps.split(|&b| b == b',');
            for dep in &mut deps {
                dep.1 = recorded.next()?;
            }
            if recorded.next().is_some() {
                return None;
            }
        }
        // Then the owner, letters and digits only, up to the next `;`.
        let owner_at = stamps_end + 1;
        let owner_len = bytes
            .get(owner_at..)?
            .iter()
            .take(41)
            .position(|&b| b == b';')?;
        let owner = &bytes[owner_at..owner_at + owner_len];
        if owner.is_empty() || !owner.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        Some(Envelope {
            deps,
            owner,
            value_at: owner_at + owner_len + 1,
        })
    }

    /// Whether `keys` are the stamp keys of this entry's dependencies, in order.
    pub(super) fn has_stamp_keys(&self, keys: &[Vec<u8>], prefix: &[u8]) -> bool {
        keys.len() == self.deps.len()
            && keys
                .iter()
                .zip(&self.deps)
                .all(|(key, (dep, _))| key.strip_prefix(prefix) == Some(*dep))
    }
}

/// The start of an entry up to its stamps: `0xB7`, `n:`, then per dependency
/// `<len>:<dependency>`. The caller writes it, so the script only appends the stamps it reads.
pub(super) fn entry_header(deps: &[String]) -> Vec<u8> {
    let mut header = Vec::with_capacity(8 + deps.iter().map(|d| d.len() + 4).sum::<usize>());
    header.push(ENTRY_MAGIC);
    // Writing into a Vec cannot fail.
    let _ = write!(header, "{}:", deps.len());
    for dep in deps {
        let _ = write!(header, "{}:", dep.len());
        header.extend_from_slice(dep.as_bytes());
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse_and_garbage_does_not() {
        let mut bytes = entry_header(&["dep".into(), "a:{};,".into()]);
        bytes.extend_from_slice(b"1:1:2,c99;17ab;VAL;UE,");
        let e = Envelope::parse(&bytes).unwrap();
        assert_eq!(
            e.deps,
            vec![(&b"dep"[..], &b"1:1:2"[..]), (&b"a:{};,"[..], &b"c99"[..])]
        );
        assert_eq!(e.owner, b"17ab");
        assert_eq!(&bytes[e.value_at..], b"VAL;UE,");

        let mut bytes = entry_header(&[]);
        bytes.extend_from_slice(b";4;V");
        let e = Envelope::parse(&bytes).unwrap();
        assert!(e.deps.is_empty());
        assert_eq!(e.owner, b"4");
        assert_eq!(&bytes[e.value_at..], b"V");

        for garbage in [
            &b""[..],
            b"\xA7\x01\x01\0\0\0\0[]",
            b"\xB52:3:dep5:1:1:24:a:{}3:c99VALUE",
            // The layout before entries recorded the clock's owner.
            b"\xB61:3:dep1:1;V",
            b"\xB60:;V",
            b"\xB7",
            b"\xB7x:",
            b"\xB79999999999999:",
            b"\xB71:3:de",
            b"\xB71:99999999999999999999:d",
            b"\xB71:3:dep",
            b"\xB71:3:depc1,c2;1;V",
            b"\xB72:3:dep1:xc1;1;V",
            b"\xB70:c1;1;V",
            // No owner, an empty one, or one with other characters.
            b"\xB71:3:dep1:1;V",
            b"\xB70:;;V",
            b"\xB70:;1-x;V",
            b"\xB70:;1",
        ] {
            assert!(Envelope::parse(garbage).is_none(), "{garbage:?}");
        }
    }
}
