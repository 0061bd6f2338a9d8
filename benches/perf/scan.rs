//! The bench client's reader of `process/read` pages: a JSON walker that checks a whole
//! message's syntax and hands every value, with the member names leading to it, to a
//! visitor, finding where each string ends with the memchr crate's vector search instead of
//! serde_json's byte-group scan (a page is ~5.7 MiB of base64). It gives up (None) on
//! anything it does not vouch for: an escape in a string, a control character in a short
//! one, nesting past `MAX_DEPTH`, a syntax error, or a visitor's refusal; the caller then
//! parses the message with serde_json as before. Long strings are not checked for control
//! characters here: the visitor must refuse any it does not decode as base64 (which admits
//! alphabet characters only). It owns no I/O and decodes nothing.

/// Deepest nesting walked; deeper messages go to serde_json.
const MAX_DEPTH: usize = 8;
/// Strings up to this long are checked for control characters here.
const CHECKED_STRING_BYTES: usize = 256;

/// One value met by the walk.
pub enum Token<'a> {
    Str(&'a str),
    /// A number's text, checked against the JSON grammar.
    Num(&'a str),
    Bool(bool),
    Null,
    /// An object starts (`Open(true)`) or an array does (`Open(false)`).
    Open(bool),
    /// The object or array at this path ends.
    Close,
}

/// Walks `text`, one JSON value and nothing after it but whitespace; the visitor gets the
/// member names from the root (array elements add none) and returns false to give up.
pub fn walk<'a>(text: &'a str, visit: &mut dyn FnMut(&[&'a str], Token<'a>) -> bool) -> Option<()> {
    let mut w = Walker { text, at: 0, path: Vec::with_capacity(MAX_DEPTH) };
    w.value(visit, 0)?;
    w.skip_ws();
    (w.at == text.len()).then_some(())
}

struct Walker<'a> {
    text: &'a str,
    at: usize,
    path: Vec<&'a str>,
}

impl<'a> Walker<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_ws(&mut self) {
        while matches!(self.bytes().get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.bytes().get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// A string without escapes, the opening quote at `self.at`.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at + 1;
        let rest = self.bytes().get(start..)?;
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[len] != b'"' {
            return None;
        }
        let body = &rest[..len];
        if body.len() <= CHECKED_STRING_BYTES && body.iter().any(|&b| b < 0x20) {
            return None;
        }
        self.at = start + len + 1;
        // Quotes are ASCII, so both ends are on character boundaries.
        self.text.get(start..start + len)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<&'a str> {
        let b = self.bytes();
        let start = self.at;
        let mut i = start;
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
        self.text.get(start..i)
    }

    fn value(
        &mut self,
        visit: &mut dyn FnMut(&[&'a str], Token<'a>) -> bool,
        depth: usize,
    ) -> Option<()> {
        self.skip_ws();
        let token = match *self.bytes().get(self.at)? {
            b'"' => Token::Str(self.string()?),
            b'{' | b'[' if depth >= MAX_DEPTH => return None,
            open @ (b'{' | b'[') => {
                self.at += 1;
                let object = open == b'{';
                if !visit(&self.path, Token::Open(object)) {
                    return None;
                }
                let close = if object { b'}' } else { b']' };
                if self.eat(close).is_none() {
                    loop {
                        if object {
                            self.skip_ws();
                            if self.bytes().get(self.at) != Some(&b'"') {
                                return None;
                            }
                            let name = self.string()?;
                            self.eat(b':')?;
                            self.path.push(name);
                            self.value(visit, depth + 1)?;
                            self.path.pop();
                        } else {
                            self.value(visit, depth + 1)?;
                        }
                        if self.eat(b',').is_none() {
                            self.eat(close)?;
                            break;
                        }
                    }
                }
                Token::Close
            }
            b't' if self.text[self.at..].starts_with("true") => {
                self.at += 4;
                Token::Bool(true)
            }
            b'f' if self.text[self.at..].starts_with("false") => {
                self.at += 5;
                Token::Bool(false)
            }
            b'n' if self.text[self.at..].starts_with("null") => {
                self.at += 4;
                Token::Null
            }
            _ => Token::Num(self.number()?),
        };
        visit(&self.path, token).then_some(())
    }
}
