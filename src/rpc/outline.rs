//! One validating pass over a request's text that records where its envelope members and its
//! params' members are (PROTOCOL.md §2.1), so that the later readings of a large message — the
//! ordering keys, the sandbox check, lifting a file's base64 — look up positions instead of
//! walking the text again. Why: a 64 MiB `fs/writeFile` is 85 MiB of text, and the nesting
//! check, the envelope decode, the keys scan, the sandbox scan and the base64 lift each
//! walked all of it (a fifth of the reading thread's time, perf).
//!
//! The outline vouches only for what it is sure reads exactly as the decoders read it: valid
//! JSON nested at most `MAX_NESTING` deep, a top-level object without duplicate envelope
//! members, a `method` string and envelope and params member names free of escapes, and no
//! `\u` escape anywhere. Anything else gives None, and the caller takes
//! the decoders' path, which says what is wrong in their words. Pure functions over text.

use std::ops::Range;

/// Deepest JSON nesting a message may have (§10); deeper is malformed (§1.4).
pub const MAX_NESTING: usize = 128;

/// One member of the params object: positions in the params text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Field {
    /// Where the member starts: its name's opening quote.
    pub(super) start: usize,
    /// The name's body (free of escapes).
    pub(super) name: Range<usize>,
    /// The value, from its first byte to just past its last.
    pub(super) value: Range<usize>,
    /// The value is a string without escapes.
    pub(super) plain_string: bool,
}

/// A request as the outline found it; positions in the message text.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Outline {
    pub(super) id: Range<usize>,
    /// The method string's body.
    pub(super) method: Range<usize>,
    /// The params value, absent when missing or `null`.
    pub(super) params: Option<Range<usize>>,
    /// The params object's members in order (positions in the params text); None when
    /// params is not an object.
    pub(super) members: Option<Vec<Field>>,
    /// Whether params holds, at any depth, a member named `sandbox` whose value is an
    /// object: what `fs::confined::carries_sandbox` finds in the params text.
    pub(super) sandbox: bool,
}

/// The envelope members the decoder reads; a second one of these is its error.
const ENVELOPE: [&str; 5] = ["id", "method", "params", "result", "error"];
const METHOD: usize = 1;
const PARAMS: usize = 2;

/// The outline of `text` when it is a request the outline vouches for (see the module
/// doc); None otherwise, including for notifications and responses.
pub(super) fn outline(text: &str) -> Option<Outline> {
    let mut walk = Walk { b: text.as_bytes(), at: 0 };
    let mut found = Found::default();
    // Open containers, true for an object; `open[0]` is unused.
    let mut open = [false; MAX_NESTING + 1];
    walk.ws();
    if walk.peek()? != b'{' {
        return None;
    }
    walk.at += 1;
    open[1] = true;
    let mut depth = 1;
    // True right after `{` or `[`: a close may come next, not a comma.
    let mut fresh = true;
    loop {
        walk.ws();
        let object = open[depth];
        let c = walk.peek()?;
        if c == if object { b'}' } else { b']' } {
            walk.at += 1;
            depth -= 1;
            if depth == 0 {
                break;
            }
            if depth == 1 {
                found.in_params = false;
            }
            // The container was a value held one level up.
            found.value_end(depth, walk.at, false);
            fresh = false;
            continue;
        }
        if !fresh {
            if c != b',' {
                return None;
            }
            walk.at += 1;
            walk.ws();
        }
        fresh = false;
        let mut named_sandbox = false;
        if object {
            let start = walk.at;
            if walk.peek()? != b'"' {
                return None;
            }
            let (name, plain) = walk.string()?;
            let in_params_object = found.in_params && depth == 2 && found.members.is_some();
            if (depth == 1 || in_params_object) && !plain {
                return None;
            }
            walk.ws();
            if walk.peek()? != b':' {
                return None;
            }
            walk.at += 1;
            walk.ws();
            let value = walk.at;
            if depth == 1 {
                let known = ENVELOPE.iter().position(|n| n.as_bytes() == &walk.b[name.clone()]);
                if known.is_some_and(|k| found.seen[k].is_some()) {
                    return None;
                }
                found.top = Some((known, value));
            } else if in_params_object {
                found.inner = Some((name.clone(), start, value));
            }
            named_sandbox = found.in_params && plain && &walk.b[name] == b"sandbox";
        }
        let c = walk.peek()?;
        if c == b'{' || c == b'[' {
            found.sandbox |= named_sandbox && c == b'{';
            if depth == MAX_NESTING {
                return None;
            }
            walk.at += 1;
            depth += 1;
            open[depth] = c == b'{';
            fresh = true;
            if let (2, Some((Some(PARAMS), start))) = (depth, found.top) {
                found.in_params = true;
                found.params_start = start;
                if c == b'{' {
                    found.members = Some(Vec::new());
                }
            }
            continue;
        }
        let start = walk.at;
        let plain = match c {
            b'"' => walk.string()?.1,
            b't' => walk.literal(b"true")?,
            b'f' => walk.literal(b"false")?,
            b'n' => walk.literal(b"null")?,
            _ => walk.number()?,
        };
        if depth == 1 && matches!(found.top, Some((Some(METHOD), _))) {
            // The method is kept as its string's body, and only a string without escapes.
            if c != b'"' {
                return None;
            }
            found.top = None;
            found.method_plain = plain;
            found.seen[METHOD] = Some(start + 1..walk.at - 1);
            continue;
        }
        found.value_end(depth, walk.at, plain);
    }
    walk.ws();
    if walk.at != walk.b.len() || !found.method_plain {
        return None;
    }
    let [id, method, params, ..] = found.seen;
    let params = params.filter(|p| &text[p.clone()] != "null");
    let members = if params.is_some() { found.members } else { None };
    Some(Outline { id: id?, method: method?, params, members, sandbox: found.sandbox })
}

/// What the walk has found so far.
#[derive(Default)]
struct Found {
    /// The envelope members' values, by their index in ENVELOPE.
    seen: [Option<Range<usize>>; 5],
    method_plain: bool,
    /// The envelope member whose value is being read (its index in ENVELOPE, if one) and
    /// where that value starts.
    top: Option<(Option<usize>, usize)>,
    /// The params value (an object or array, at depth 2) is open, and where it starts.
    in_params: bool,
    params_start: usize,
    /// The params member being read: name, start, value start (in the text).
    inner: Option<(Range<usize>, usize, usize)>,
    members: Option<Vec<Field>>,
    sandbox: bool,
}

impl Found {
    /// A value held at `depth` ended at `end`: record it if it is an envelope member's or
    /// a params member's.
    fn value_end(&mut self, depth: usize, end: usize, plain: bool) {
        if depth == 1 {
            if let Some((Some(k), start)) = self.top.take() {
                self.seen[k] = Some(start..end);
            }
        } else if self.in_params && depth == 2 {
            if let (Some((name, start, value)), Some(list)) = (self.inner.take(), &mut self.members)
            {
                let base = self.params_start;
                list.push(Field {
                    start: start - base,
                    name: name.start - base..name.end - base,
                    value: value - base..end - base,
                    plain_string: plain,
                });
            }
        }
    }
}

struct Walk<'a> {
    b: &'a [u8],
    at: usize,
}

impl Walk<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string at `self.at` (its opening quote): its body and whether it is free of
    /// escapes. None for a control character, a bad escape, or a `\u` escape.
    fn string(&mut self) -> Option<(Range<usize>, bool)> {
        let start = self.at + 1;
        let mut at = start;
        let mut plain = true;
        loop {
            at = stop(self.b, at)?;
            match self.b[at] {
                b'"' => break,
                b'\\' => {
                    plain = false;
                    match self.b.get(at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        self.at = at + 1;
        Some((start..at, plain))
    }

    /// `word` (`true`, `false`, `null`); false, as it is no string.
    fn literal(&mut self, word: &[u8]) -> Option<bool> {
        if !self.b[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(false)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<bool> {
        let b = self.b;
        let mut i = self.at;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if b.get(i) == Some(&b'0') {
            i += 1;
        } else if !digits(&mut i) {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.at = i;
        Some(false)
    }
}

/// The first quote, backslash or control character at or after `from`.
fn stop(b: &[u8], from: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
            _mm_or_si128, _mm_set1_epi8,
        };
        let mut at = from;
        // SAFETY: SSE2 is part of x86_64; every load reads 16 bytes inside `b`.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let control = _mm_set1_epi8(0x1f);
            // The bytes that stop a string, as 0xff lanes; a byte at most 0x1f equals its
            // minimum with 0x1f.
            let hits = |at: usize| {
                let v = _mm_loadu_si128(b.as_ptr().add(at).cast::<__m128i>());
                _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    _mm_cmpeq_epi8(_mm_min_epu8(v, control), v),
                )
            };
            // A long string (a file's base64) is crossed 64 bytes a step, one test per step.
            while at + 64 <= b.len() {
                let (h0, h1, h2, h3) = (hits(at), hits(at + 16), hits(at + 32), hits(at + 48));
                if _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(h0, h1), _mm_or_si128(h2, h3))) != 0
                {
                    break;
                }
                at += 64;
            }
            while at + 16 <= b.len() {
                let mask = _mm_movemask_epi8(hits(at));
                if mask != 0 {
                    return Some(at + mask.trailing_zeros() as usize);
                }
                at += 16;
            }
        }
        b[at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|n| at + n)
    }
    #[cfg(not(target_arch = "x86_64"))]
    b[from..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|n| from + n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stop_finds_the_first_stopping_byte_across_every_step_size() {
        for len in [0, 15, 16, 63, 64, 65, 130, 200] {
            for from in [0, 1, 17, 63] {
                assert_eq!(super::stop(&vec![b'a'; len], from.min(len)), None);
                for at in from..len {
                    for byte in [b'"', b'\\', 0x00, 0x1f] {
                        let mut text = vec![b'a'; len];
                        text[at] = byte;
                        // A later stop must not hide the first one.
                        text[len - 1] = b'"';
                        assert_eq!(super::stop(&text, from), Some(at), "{len} {from} {at}");
                    }
                }
            }
        }
    }
}
