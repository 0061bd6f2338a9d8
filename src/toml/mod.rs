//! TOML text ⇄ ordered table, for `environmentConfig/read` (envconfig) only: `parse` reads a
//! codex config or requirements file into a `Table` that keeps the file's key order, and
//! `to_string` writes a table back byte for byte as upstream's `toml::to_string(&Table)`
//! (toml 0.9, `preserve_order`) does, since that text goes on the wire.
//!
//! The parser accepts what toml 0.9 accepts (TOML 1.0 plus the 1.1 additions it already
//! takes: `\e` and `\xHH` escapes, times without seconds, newlines, comments and a trailing
//! comma in inline tables) and rejects what it rejects; an error is a byte offset and a
//! message worded like the crate's for the common mistakes. Date-times are kept as their
//! canonical text, which is all the writer needs. This module must not read files, know
//! about codex's keys, or grow into a general TOML library: no serde, no editing, no
//! comments preserved. Nesting is bounded (`MAX_DEPTH`), so no input can exhaust the stack.

use std::fmt::Write as _;

/// How deeply tables and arrays may nest (counting every table, array and dotted-key
/// level from the root). Upstream's files are a few levels deep.
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Canonical text, as toml writes it (`1979-05-27T07:32:00Z`).
    Datetime(String),
    Array(Vec<Value>),
    Table(Table),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// Keys and values in insertion order; lookups are linear (config files are small).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    entries: Vec<(String, Value)>,
}

type Entry<'a> = (&'a String, &'a Value);

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Replaces the value of an existing key in place, else appends.
    pub fn insert(&mut self, key: String, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<'a> IntoIterator for &'a Table {
    type Item = Entry<'a>;
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, Value)>, fn(&'a (String, Value)) -> Entry<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        fn pair(e: &(String, Value)) -> Entry<'_> {
            (&e.0, &e.1)
        }
        self.entries.iter().map(pair as fn(&'a (String, Value)) -> Entry<'a>)
    }
}

/// A parse error: where (byte offset into the text) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub message: String,
}

impl Error {
    fn new(offset: usize, message: impl Into<String>) -> Error {
        Error { offset, message: message.into() }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

const DUPLICATE_KEY: &str = "duplicate key";
const UNQUOTED_STRING: &str = "string values must be quoted, expected literal string";
const EXTEND_INLINE: &str = "cannot extend value of type inline table with a dotted key";

/// How a table came to be, which decides what may later add to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Named only as a prefix of a header (`a` in `[a.b]`): a later `[a]` may define it once.
    Implicit,
    /// Defined by a `[header]` (or `[[header]]` element, or the root).
    Header,
    /// Created by a dotted key; only more dotted keys in the same place may extend it.
    Dotted,
}

/// The parser's view of a table: like `Table`, plus how each sub-table was made.
#[derive(Debug)]
struct Node {
    kind: Kind,
    entries: Vec<(String, Item)>,
}

#[derive(Debug)]
enum Item {
    /// A finished value: scalars, static arrays and inline tables, none of which may be
    /// extended later.
    Value(Value),
    Table(Node),
    /// `[[array of tables]]`.
    Tables(Vec<Node>),
}

impl Node {
    fn new(kind: Kind) -> Node {
        Node { kind, entries: Vec::new() }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == key)
    }

    fn into_table(self) -> Table {
        let entries = self.entries.into_iter().map(|(k, item)| (k, item.into_value())).collect();
        Table { entries }
    }
}

impl Item {
    fn into_value(self) -> Value {
        match self {
            Item::Value(v) => v,
            Item::Table(n) => Value::Table(n.into_table()),
            Item::Tables(ns) => {
                Value::Array(ns.into_iter().map(|n| Value::Table(n.into_table())).collect())
            }
        }
    }
}

/// A key segment and the byte offset it starts at (for errors).
type Key = (String, usize);

/// Parses a whole TOML document.
pub fn parse(text: &str) -> Result<Table, Error> {
    let mut p = Parser { s: text.as_bytes(), pos: 0 };
    if text.starts_with('\u{feff}') {
        p.pos = '\u{feff}'.len_utf8();
    }
    let mut root = Node::new(Kind::Header);
    // The header path of the table key/value lines go to (an array of tables means its
    // last element).
    let mut current: Vec<String> = Vec::new();
    loop {
        p.skip_ws();
        match p.peek() {
            None => break,
            Some(b'#') | Some(b'\n') | Some(b'\r') => p.end_of_line()?,
            Some(b'[') => {
                let array = p.s.get(p.pos + 1) == Some(&b'[');
                p.pos += if array { 2 } else { 1 };
                let keys = p.key()?;
                if keys.len() > MAX_DEPTH {
                    return Err(Error::new(keys[0].1, too_deep()));
                }
                let close: &[u8] = if array { b"]]" } else { b"]" };
                if !p.s[p.pos..].starts_with(close) {
                    let what = if array { "array table" } else { "table" };
                    return Err(Error::new(p.pos, format!("unclosed {what}, expected `]`")));
                }
                p.pos += close.len();
                define_table(&mut root, &keys, array)?;
                current = keys.into_iter().map(|(k, _)| k).collect();
                p.skip_ws();
                p.end_of_line()?;
            }
            Some(_) => {
                let (keys, value) = p.key_value(current.len(), false)?;
                let table = node_at(&mut root, &current);
                insert_dotted(table, &keys, value)?;
                p.skip_ws();
                p.end_of_line()?;
            }
        }
    }
    Ok(root.into_table())
}

fn too_deep() -> String {
    format!("nesting deeper than {MAX_DEPTH} levels")
}

/// The table a header path names, already checked by `define_table`.
fn node_at<'n>(root: &'n mut Node, path: &[String]) -> &'n mut Node {
    let mut node = root;
    for key in path {
        let i = node.position(key).expect("a defined header's tables exist");
        node = match &mut node.entries[i].1 {
            Item::Table(n) => n,
            Item::Tables(ns) => ns.last_mut().expect("an array of tables is never empty"),
            Item::Value(_) => unreachable!("a defined header's path holds only tables"),
        };
    }
    node
}

/// Applies `[keys]` (or `[[keys]]`) to the tree.
fn define_table(root: &mut Node, keys: &[Key], array: bool) -> Result<(), Error> {
    let (last, prefix) = keys.split_last().expect("a key has at least one segment");
    let mut node = root;
    for (key, at) in prefix {
        let i = match node.position(key) {
            Some(i) => i,
            None => {
                node.entries.push((key.clone(), Item::Table(Node::new(Kind::Implicit))));
                node.entries.len() - 1
            }
        };
        node = match &mut node.entries[i].1 {
            Item::Table(n) => n,
            Item::Tables(ns) => ns.last_mut().expect("an array of tables is never empty"),
            Item::Value(v) => return Err(extend_error(v, *at)),
        };
    }
    let (key, at) = last;
    match (node.position(key), array) {
        (None, false) => node.entries.push((key.clone(), Item::Table(Node::new(Kind::Header)))),
        (None, true) => {
            node.entries.push((key.clone(), Item::Tables(vec![Node::new(Kind::Header)])))
        }
        (Some(i), false) => match &mut node.entries[i].1 {
            Item::Table(n) if n.kind == Kind::Implicit => {
                // As the toml crate orders it: a table named before only as part of a
                // longer header moves to where its own header is (its parent's end).
                n.kind = Kind::Header;
                let entry = node.entries.remove(i);
                node.entries.push(entry);
            }
            Item::Value(v @ Value::Table(_)) => return Err(extend_error(v, *at)),
            _ => return Err(Error::new(*at, DUPLICATE_KEY)),
        },
        (Some(i), true) => match &mut node.entries[i].1 {
            Item::Tables(ns) => ns.push(Node::new(Kind::Header)),
            _ => return Err(Error::new(*at, DUPLICATE_KEY)),
        },
    }
    Ok(())
}

fn extend_error(v: &Value, at: usize) -> Error {
    match v {
        Value::Table(_) => Error::new(at, EXTEND_INLINE),
        _ => Error::new(at, DUPLICATE_KEY),
    }
}

/// Adds `a.b.c = value` to `node`, creating dotted tables for `a` and `a.b`.
fn insert_dotted(node: &mut Node, keys: &[Key], value: Value) -> Result<(), Error> {
    let (last, prefix) = keys.split_last().expect("a key has at least one segment");
    let mut node = node;
    for (key, at) in prefix {
        let i = match node.position(key) {
            Some(i) => i,
            None => {
                node.entries.push((key.clone(), Item::Table(Node::new(Kind::Dotted))));
                node.entries.len() - 1
            }
        };
        node = match &mut node.entries[i].1 {
            Item::Table(n) if n.kind == Kind::Dotted => n,
            Item::Value(v) => return Err(extend_error(v, *at)),
            _ => return Err(Error::new(*at, DUPLICATE_KEY)),
        };
    }
    let (key, at) = last;
    if node.position(key).is_some() {
        return Err(Error::new(*at, DUPLICATE_KEY));
    }
    node.entries.push((key.clone(), Item::Value(value)));
    Ok(())
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Control characters no string or comment may hold raw (tab is allowed).
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at(&self, prefix: &[u8]) -> bool {
        self.s[self.pos..].starts_with(prefix)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ') | Some(b'\t')) {
            self.pos += 1;
        }
    }

    /// A comment (if any) and then a newline or the end of the text.
    fn end_of_line(&mut self) -> Result<(), Error> {
        self.comment()?;
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'\r') if self.s.get(self.pos + 1) == Some(&b'\n') => {
                self.pos += 2;
                Ok(())
            }
            Some(b'\r') => Err(Error::new(
                self.pos,
                "carriage return must be followed by newline, expected newline",
            )),
            Some(_) => Err(Error::new(self.pos, "unexpected key or value, expected newline, `#`")),
        }
    }

    fn comment(&mut self) -> Result<(), Error> {
        if self.peek() != Some(b'#') {
            return Ok(());
        }
        self.pos += 1;
        while let Some(b) = self.peek() {
            if b == b'\n' || (b == b'\r' && self.s.get(self.pos + 1) == Some(&b'\n')) {
                break;
            }
            if is_control(b) {
                return Err(Error::new(
                    self.pos,
                    "invalid comment character, expected printable characters",
                ));
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// Whitespace, comments and newlines, as allowed inside arrays and inline tables.
    fn skip_blank(&mut self) -> Result<(), Error> {
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'#') => self.comment()?,
                Some(b'\n') => self.pos += 1,
                Some(b'\r') if self.s.get(self.pos + 1) == Some(&b'\n') => self.pos += 2,
                _ => return Ok(()),
            }
        }
    }

    /// A possibly dotted key; leaves the position after trailing whitespace.
    fn key(&mut self) -> Result<Vec<Key>, Error> {
        let mut keys = Vec::new();
        loop {
            self.skip_ws();
            let start = self.pos;
            let key = match self.peek() {
                Some(b'"') if self.at(b"\"\"\"") => {
                    return Err(Error::new(
                        start,
                        "keys cannot be multi-line basic strings, expected basic string, literal string",
                    ))
                }
                Some(b'\'') if self.at(b"'''") => {
                    return Err(Error::new(
                        start,
                        "keys cannot be multi-line literal strings, expected basic string, literal string",
                    ))
                }
                Some(b'"') => self.basic_string()?,
                Some(b'\'') => self.literal_string()?,
                Some(b) if is_bare(b) => {
                    while self.peek().is_some_and(is_bare) {
                        self.pos += 1;
                    }
                    self.text(start, self.pos)?
                }
                _ => {
                    return Err(Error::new(
                        start,
                        "unquoted keys cannot be empty, expected letters, numbers, `-`, `_`",
                    ))
                }
            };
            keys.push((key, start));
            self.skip_ws();
            if self.peek() != Some(b'.') {
                return Ok(keys);
            }
            self.pos += 1;
        }
    }

    /// `key = value`, for a table `depth` levels below the root. Inside an inline table
    /// (`inline`) newlines and comments may surround the `=`, as the toml crate accepts.
    fn key_value(&mut self, depth: usize, inline: bool) -> Result<(Vec<Key>, Value), Error> {
        let keys = self.key()?;
        if inline {
            self.skip_blank()?;
        }
        let depth = depth + keys.len();
        if depth > MAX_DEPTH {
            return Err(Error::new(keys[0].1, too_deep()));
        }
        if self.peek() != Some(b'=') {
            return Err(Error::new(self.pos, "key with no value, expected `=`"));
        }
        self.pos += 1;
        if inline {
            self.skip_blank()?;
        } else {
            self.skip_ws();
        }
        let value = self.value(depth)?;
        Ok((keys, value))
    }

    fn text(&self, from: usize, to: usize) -> Result<String, Error> {
        String::from_utf8(self.s[from..to].to_vec()).map_err(|_| Error::new(from, "invalid UTF-8"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.peek() {
            Some(b'"') if self.at(b"\"\"\"") => Ok(Value::String(self.ml_basic_string()?)),
            Some(b'"') => Ok(Value::String(self.basic_string()?)),
            Some(b'\'') if self.at(b"'''") => Ok(Value::String(self.ml_literal_string()?)),
            Some(b'\'') => Ok(Value::String(self.literal_string()?)),
            Some(b'[') => self.array(depth + 1),
            Some(b'{') => self.inline_table(depth + 1),
            _ => self.scalar(),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::new(self.pos, too_deep()));
        }
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_blank()?;
            match self.peek() {
                Some(b']') => break,
                Some(b',') => {
                    return Err(Error::new(self.pos, "extra comma in array, expected value"))
                }
                None => return Err(Error::new(self.pos, "unclosed array, expected `]`")),
                _ => {}
            }
            items.push(self.value(depth)?);
            self.skip_blank()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => break,
                _ => return Err(Error::new(self.pos, "unclosed array, expected `]`")),
            }
        }
        self.pos += 1;
        Ok(Value::Array(items))
    }

    fn inline_table(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::new(self.pos, too_deep()));
        }
        self.pos += 1;
        let mut node = Node::new(Kind::Dotted);
        loop {
            self.skip_blank()?;
            match self.peek() {
                Some(b'}') => break,
                None => return Err(Error::new(self.pos, "unclosed inline table, expected `}`")),
                _ => {}
            }
            let (keys, value) = self.key_value(depth, true)?;
            insert_dotted(&mut node, &keys, value)?;
            self.skip_blank()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => break,
                _ => return Err(Error::new(self.pos, "unclosed inline table, expected `}`")),
            }
        }
        self.pos += 1;
        Ok(Value::Table(node.into_table()))
    }

    /// `"…"`, positioned on the opening quote.
    fn basic_string(&mut self) -> Result<String, Error> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return self.utf8(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                None | Some(b'\n') | Some(b'\r') => {
                    return Err(Error::new(self.pos, "invalid basic string, expected `\"`"))
                }
                Some(b) if is_control(b) => {
                    return Err(Error::new(
                        self.pos,
                        "invalid basic string, expected non-double-quote visible characters, `\\`",
                    ))
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// `"""…"""`, positioned on the opening quotes.
    fn ml_basic_string(&mut self) -> Result<String, Error> {
        self.pos += 3;
        self.skip_newline();
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') if self.at(b"\"\"\"") => {
                    self.close_ml(b'"', &mut out)?;
                    return self.utf8(out);
                }
                Some(b'\\') => {
                    // A line-ending backslash swallows the newline and all blank space after.
                    let mut i = self.pos + 1;
                    while matches!(self.s.get(i), Some(b' ') | Some(b'\t')) {
                        i += 1;
                    }
                    if matches!(self.s.get(i), Some(b'\n') | Some(b'\r')) {
                        self.pos = i;
                        loop {
                            self.skip_ws();
                            if !self.skip_newline() {
                                break;
                            }
                        }
                    } else {
                        self.escape(&mut out)?;
                    }
                }
                None => {
                    return Err(Error::new(
                        self.pos,
                        "invalid multi-line basic string, expected `\"`",
                    ))
                }
                Some(b) => self.ml_char(b, &mut out)?,
            }
        }
    }

    /// `'''…'''`, positioned on the opening quotes.
    fn ml_literal_string(&mut self) -> Result<String, Error> {
        self.pos += 3;
        self.skip_newline();
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'\'') if self.at(b"'''") => {
                    self.close_ml(b'\'', &mut out)?;
                    return self.utf8(out);
                }
                None => {
                    return Err(Error::new(
                        self.pos,
                        "invalid multi-line literal string, expected `'`",
                    ))
                }
                Some(b) => self.ml_char(b, &mut out)?,
            }
        }
    }

    /// One raw character of a multi-line string body.
    fn ml_char(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        if b == b'\r' {
            if self.s.get(self.pos + 1) != Some(&b'\n') {
                return Err(Error::new(
                    self.pos,
                    "carriage return must be followed by newline, expected newline",
                ));
            }
        } else if b != b'\n' && is_control(b) {
            return Err(Error::new(
                self.pos,
                "invalid multi-line string, expected printable characters",
            ));
        }
        out.push(b);
        self.pos += 1;
        Ok(())
    }

    /// The closing delimiter of a multi-line string, which may be preceded by up to two
    /// quotes that belong to the content.
    fn close_ml(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut run = 0;
        while self.s.get(self.pos + run) == Some(&quote) {
            run += 1;
        }
        if run > 5 {
            return Err(Error::new(self.pos + 5, "unexpected key or value, expected newline, `#`"));
        }
        out.extend(std::iter::repeat_n(quote, run - 3));
        self.pos += run;
        Ok(())
    }

    fn skip_newline(&mut self) -> bool {
        if self.at(b"\n") {
            self.pos += 1;
            true
        } else if self.at(b"\r\n") {
            self.pos += 2;
            true
        } else {
            false
        }
    }

    /// `'…'`, positioned on the opening quote.
    fn literal_string(&mut self) -> Result<String, Error> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'\'') => {
                    let s = self.text(start, self.pos)?;
                    self.pos += 1;
                    return Ok(s);
                }
                None | Some(b'\n') | Some(b'\r') => {
                    return Err(Error::new(self.pos, "invalid literal string, expected `'`"))
                }
                Some(b) if is_control(b) => {
                    return Err(Error::new(
                        self.pos,
                        "invalid literal string, expected non-single-quote visible characters",
                    ))
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String, Error> {
        String::from_utf8(bytes).map_err(|_| Error::new(self.pos, "invalid UTF-8"))
    }

    /// A backslash escape in a basic string, positioned on the backslash.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.pos += 1;
        let at = self.pos;
        let simple = match self.peek() {
            Some(b'b') => Some('\u{8}'),
            Some(b't') => Some('\t'),
            Some(b'n') => Some('\n'),
            Some(b'f') => Some('\u{c}'),
            Some(b'r') => Some('\r'),
            Some(b'e') => Some('\u{1b}'),
            Some(b'"') => Some('"'),
            Some(b'\\') => Some('\\'),
            _ => None,
        };
        let c = match (simple, self.peek()) {
            (Some(c), _) => {
                self.pos += 1;
                c
            }
            (None, Some(b'x')) => self.hex_escape(2)?,
            (None, Some(b'u')) => self.hex_escape(4)?,
            (None, Some(b'U')) => self.hex_escape(8)?,
            _ => {
                return Err(Error::new(
                    at,
                    "missing escaped value, expected `b`, `e`, `f`, `n`, `r`, `\\`, `\"`, `x`, `u`, `U`",
                ))
            }
        };
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    fn hex_escape(&mut self, digits: usize) -> Result<char, Error> {
        self.pos += 1;
        let start = self.pos;
        let hex = self.s.get(start..start + digits).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let code = hex
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32);
        match code {
            Some(c) => {
                self.pos += digits;
                Ok(c)
            }
            None => Err(Error::new(start, "invalid value, expected unicode hexadecimal value")),
        }
    }

    /// A bare value: boolean, number or date-time.
    fn scalar(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        let token_byte =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.' | b':');
        while self.peek().is_some_and(token_byte) {
            self.pos += 1;
        }
        // A local date followed by a space and a time is one date-time.
        if self.pos - start == 10
            && self.s[start + 4] == b'-'
            && self.peek() == Some(b' ')
            && self.s.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            while self.peek().is_some_and(token_byte) {
                self.pos += 1;
            }
        }
        let token = &self.s[start..self.pos];
        let fail = |message: &str| Error::new(start, message);
        match token {
            b"true" => return Ok(Value::Boolean(true)),
            b"false" => return Ok(Value::Boolean(false)),
            b"inf" | b"+inf" => return Ok(Value::Float(f64::INFINITY)),
            b"-inf" => return Ok(Value::Float(f64::NEG_INFINITY)),
            // toml keeps no sign on NaN.
            b"nan" | b"+nan" | b"-nan" => return Ok(Value::Float(f64::NAN)),
            _ => {}
        }
        let Some(&first) = token.first() else {
            return Err(fail(UNQUOTED_STRING));
        };
        if first.is_ascii_alphabetic() {
            return Err(fail(if b"true".starts_with(token) {
                "invalid boolean, expected `true`"
            } else if b"false".starts_with(token) {
                "invalid boolean, expected `false`"
            } else {
                UNQUOTED_STRING
            }));
        }
        let digits_then = |n: usize, sep: u8| {
            token.len() > n && token[..n].iter().all(u8::is_ascii_digit) && token[n] == sep
        };
        if digits_then(4, b'-') || digits_then(2, b':') {
            return datetime(token).map(Value::Datetime).map_err(&fail);
        }
        number(token).map_err(fail)
    }
}

/// Checks that `_` only sits between two digits of `radix` and that all else are digits.
fn digits(s: &[u8], radix: u32) -> Result<String, &'static str> {
    if s.is_empty() {
        return Err("invalid number, expected digits");
    }
    let digit = |b: &u8| (*b as char).is_digit(radix);
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.iter().enumerate() {
        if *b == b'_' {
            if i == 0 || i + 1 == s.len() || !digit(&s[i - 1]) || !digit(&s[i + 1]) {
                return Err("`_` may only go between digits, expected nothing");
            }
        } else if digit(b) {
            out.push(*b as char);
        } else {
            return Err("invalid number");
        }
    }
    Ok(out)
}

fn number(token: &[u8]) -> Result<Value, &'static str> {
    let (sign, rest) = match token.first() {
        Some(b'+') | Some(b'-') => (Some(token[0]), &token[1..]),
        _ => (None, token),
    };
    let radix = match rest.get(..2) {
        Some(b"0x") => 16,
        Some(b"0o") => 8,
        Some(b"0b") => 2,
        _ => 10,
    };
    if radix != 10 {
        if sign.is_some() {
            return Err("integers with a radix cannot be signed, expected nothing");
        }
        let d = digits(&rest[2..], radix)?;
        let n = u64::from_str_radix(&d, radix).map_err(|_| "u64 value was too large")?;
        return i64::try_from(n).map(Value::Integer).map_err(|_| "u64 value was too large");
    }
    let float_at = rest.iter().position(|b| matches!(b, b'.' | b'e' | b'E'));
    let int_part = &rest[..float_at.unwrap_or(rest.len())];
    if int_part.is_empty() {
        return Err("invalid mantissa, expected digits");
    }
    if int_part.len() > 1 && int_part[0] == b'0' {
        return Err("unexpected leading zero, expected nothing");
    }
    let mut text = String::new();
    if sign == Some(b'-') {
        text.push('-');
    }
    text.push_str(&digits(int_part, 10)?);
    let Some(mut i) = float_at else {
        return text.parse::<i64>().map(Value::Integer).map_err(|_| "u64 value was too large");
    };
    if rest[i] == b'.' {
        let end = rest[i + 1..]
            .iter()
            .position(|b| matches!(b, b'e' | b'E'))
            .map_or(rest.len(), |e| i + 1 + e);
        let fraction = &rest[i + 1..end];
        if fraction.is_empty() || !fraction[0].is_ascii_digit() {
            return Err("invalid fraction, expected digits");
        }
        text.push('.');
        text.push_str(&digits(fraction, 10)?);
        i = end;
    }
    if i < rest.len() {
        // rest[i] is `e` or `E`.
        let mut exp = &rest[i + 1..];
        text.push('e');
        if let Some(s @ (b'+' | b'-')) = exp.first() {
            text.push(*s as char);
            exp = &exp[1..];
        }
        if exp.first().is_none_or(|b| !b.is_ascii_digit()) {
            return Err("invalid exponent, expected digits");
        }
        text.push_str(&digits(exp, 10)?);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_infinite() => Err("floating-point number overflowed"),
        Ok(f) => Ok(Value::Float(f)),
        Err(_) => Err("invalid floating-point number"),
    }
}

/// Reads `n` ASCII digits at `*i` as a number, advancing `*i`.
fn fixed(s: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    let part = s.get(*i..*i + n)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *i += n;
    Some(part.iter().fold(0, |acc, b| acc * 10 + u32::from(b - b'0')))
}

/// Validates an RFC 3339 style date-time, date or time and returns toml's canonical text.
fn datetime(s: &[u8]) -> Result<String, &'static str> {
    let mut i = 0;
    let mut out = String::new();
    let has_date = s.len() > 4 && s[4] == b'-';
    if has_date {
        let year = fixed(s, &mut i, 4).ok_or("invalid date, expected a four-digit year (YYYY)")?;
        let month = (s.get(i) == Some(&b'-'))
            .then(|| {
                i += 1;
                fixed(s, &mut i, 2)
            })
            .flatten()
            .ok_or("invalid date, expected a two-digit month (MM)")?;
        let day = (s.get(i) == Some(&b'-'))
            .then(|| {
                i += 1;
                fixed(s, &mut i, 2)
            })
            .flatten()
            .ok_or("invalid date, expected a two-digit day (DD)")?;
        if !(1..=12).contains(&month) {
            return Err("invalid date, expected month between 01 and 12");
        }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if day < 1 || day > days {
            return Err(match days {
                28 => "invalid date, expected day between 01 and 28",
                29 => "invalid date, expected day between 01 and 29",
                30 => "invalid date, expected day between 01 and 30",
                _ => "invalid date, expected day between 01 and 31",
            });
        }
        let _ = write!(out, "{year:04}-{month:02}-{day:02}");
        if i == s.len() {
            return Ok(out);
        }
        if !matches!(s[i], b'T' | b't' | b' ') {
            return Err("invalid datetime");
        }
        i += 1;
        out.push('T');
    }
    let hour = fixed(s, &mut i, 2).ok_or("invalid time, expected hour")?;
    if s.get(i) != Some(&b':') {
        return Err("invalid time, expected `:`");
    }
    i += 1;
    let minute = fixed(s, &mut i, 2).ok_or("invalid time, expected minute")?;
    let mut second = 0;
    let mut nanos = 0;
    if s.get(i) == Some(&b':') {
        i += 1;
        second = fixed(s, &mut i, 2).ok_or("invalid time, expected second")?;
        if s.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return Err("invalid time, expected nanosecond");
            }
            // Digits past nanoseconds are dropped, as toml does.
            for k in 0..9 {
                let d =
                    s.get(start + k).filter(|_| start + k < i).map_or(0, |b| u32::from(b - b'0'));
                nanos = nanos * 10 + d;
            }
        }
    }
    if hour > 23 {
        return Err("invalid time, expected hour between 00 and 23");
    }
    if minute > 59 {
        return Err("invalid time, expected minute between 00 and 59");
    }
    if second > 60 {
        return Err("invalid time, expected second between 00 and 60");
    }
    let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        let _ = write!(out, ".{}", frac.trim_end_matches('0'));
    }
    if has_date && i < s.len() {
        match s[i] {
            b'Z' | b'z' => {
                i += 1;
                out.push('Z');
            }
            sign @ (b'+' | b'-') => {
                i += 1;
                let h = fixed(s, &mut i, 2).ok_or("invalid offset, expected hours")?;
                if s.get(i) != Some(&b':') {
                    return Err("invalid offset, expected `:`");
                }
                i += 1;
                let m = fixed(s, &mut i, 2).ok_or("invalid offset, expected minutes")?;
                if h > 23 {
                    return Err("invalid offset, expected hours between 00 and 23");
                }
                if m > 59 {
                    return Err("invalid offset, expected minutes between 00 and 59");
                }
                // toml keeps the offset as signed minutes, so `-00:00` comes back as `+00:00`.
                let sign = if sign == b'-' && h + m > 0 { '-' } else { '+' };
                let _ = write!(out, "{sign}{h:02}:{m:02}");
            }
            _ => return Err("invalid datetime"),
        }
    }
    if i != s.len() {
        return Err("invalid datetime");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// `table` as toml's `to_string` writes it: each table's plain values as `key = value`
/// lines, then its sub-tables as `[a.b]` sections and arrays of tables as `[[a]]`
/// sections, depth first in key order, sections separated by one blank line. A section
/// with no values of its own is left out when it has sub-sections (but an empty leaf
/// table, and every `[[element]]`, is kept).
pub fn to_string(table: &Table) -> String {
    let mut sections = Vec::new();
    section(table, &mut Vec::new(), false, &mut sections);
    sections.join("\n")
}

/// Appends `table`'s section (if it is written) and its sub-sections to `out`.
fn section(table: &Table, path: &mut Vec<String>, element: bool, out: &mut Vec<String>) {
    let mut body = String::new();
    let mut children = false;
    for (key, value) in table {
        if value.is_table() || value.is_array_of_tables() {
            children = true;
        } else {
            write_key(&mut body, key);
            body.push_str(" = ");
            write_value(&mut body, value);
            body.push('\n');
        }
    }
    let written =
        if path.is_empty() { !body.is_empty() } else { element || !body.is_empty() || !children };
    if written {
        let mut text = String::new();
        if !path.is_empty() {
            let (open, close) = if element { ("[[", "]]") } else { ("[", "]") };
            text.push_str(open);
            text.push_str(&path.join("."));
            text.push_str(close);
            text.push('\n');
        }
        text.push_str(&body);
        out.push(text);
    }
    for (key, value) in table {
        let mut encoded = String::new();
        write_key(&mut encoded, key);
        match value {
            Value::Table(t) => {
                path.push(encoded);
                section(t, path, false, out);
                path.pop();
            }
            Value::Array(items) if value.is_array_of_tables() => {
                path.push(encoded);
                for item in items {
                    if let Value::Table(t) = item {
                        section(t, path, true, out);
                    }
                }
                path.pop();
            }
            _ => {}
        }
    }
}

impl Value {
    fn is_table(&self) -> bool {
        matches!(self, Value::Table(_))
    }

    /// A non-empty array of only tables, which toml writes as `[[key]]` sections.
    fn is_array_of_tables(&self) -> bool {
        matches!(self, Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table))
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => write_string(out, s),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => write_float(out, *f),
        Value::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Datetime(d) => out.push_str(d),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Table(t) => {
            out.push('{');
            for (i, (key, item)) in t.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                write_key(out, key);
                out.push_str(" = ");
                write_value(out, item);
            }
            if !t.is_empty() {
                out.push(' ');
            }
            out.push('}');
        }
    }
}

/// Rust's shortest round-trip decimal, with `.0` on whole numbers, as toml writes floats.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str(if f.is_sign_negative() { "-nan" } else { "nan" });
    } else if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
    } else if f.is_finite() && f % 1.0 == 0.0 {
        let _ = write!(out, "{f}.0");
    } else {
        let _ = write!(out, "{f}");
    }
}

/// What a string holds that decides how it may be quoted.
struct Shape {
    /// Longest run of `'`.
    single_quotes: usize,
    /// Longest run of `"`.
    double_quotes: usize,
    backslash: bool,
    newline: bool,
    /// A control character other than tab and newline (needs a `\` escape).
    control: bool,
}

impl Shape {
    fn of(s: &str) -> Shape {
        let mut shape = Shape {
            single_quotes: 0,
            double_quotes: 0,
            backslash: false,
            newline: false,
            control: false,
        };
        let (mut singles, mut doubles) = (0, 0);
        for b in s.bytes() {
            singles = if b == b'\'' { singles + 1 } else { 0 };
            doubles = if b == b'"' { doubles + 1 } else { 0 };
            shape.single_quotes = shape.single_quotes.max(singles);
            shape.double_quotes = shape.double_quotes.max(doubles);
            match b {
                b'\\' => shape.backslash = true,
                b'\n' => shape.newline = true,
                b'\t' => {}
                b if is_control(b) => shape.control = true,
                _ => {}
            }
        }
        shape
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Quote {
    Basic,
    Literal,
    MlBasic,
    MlLiteral,
}

/// A string value, quoted the way toml picks: plain `"…"` when nothing needs care; else
/// the first of basic, literal, multi-line basic, multi-line literal that needs no escape;
/// else basic (multi-line when it holds a newline) with escapes.
fn write_string(out: &mut String, s: &str) {
    // Strings of only these characters are written as they are, in basic quotes.
    if s.bytes().all(|b| is_bare(b) || matches!(b, b'.' | b'/' | b' ' | b':')) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    let sh = Shape::of(s);
    let quote = if !sh.control && !sh.backslash && sh.double_quotes == 0 && !sh.newline {
        Quote::Basic
    } else if !sh.control && sh.single_quotes == 0 && !sh.newline {
        Quote::Literal
    } else if !sh.control && !sh.backslash && sh.double_quotes <= 2 {
        Quote::MlBasic
    } else if !sh.control && sh.single_quotes <= 2 {
        Quote::MlLiteral
    } else if sh.newline {
        Quote::MlBasic
    } else {
        Quote::Basic
    };
    write_quoted(out, s, quote, sh.newline);
}

/// A key: bare when it can be, else basic quotes, else literal, else escaped basic.
fn write_key(out: &mut String, key: &str) {
    if !key.is_empty() && key.bytes().all(is_bare) {
        out.push_str(key);
        return;
    }
    let control = key.bytes().any(|b| b != b'\t' && is_control(b));
    let quote = if !control && !key.contains(['\\', '"']) {
        Quote::Basic
    } else if !control && !key.contains('\'') {
        Quote::Literal
    } else {
        Quote::Basic
    };
    write_quoted(out, key, quote, false);
}

fn write_quoted(out: &mut String, s: &str, quote: Quote, newline: bool) {
    let delimiter = match quote {
        Quote::Basic => "\"",
        Quote::Literal => "'",
        Quote::MlBasic => "\"\"\"",
        Quote::MlLiteral => "'''",
    };
    let multiline = matches!(quote, Quote::MlBasic | Quote::MlLiteral);
    out.push_str(delimiter);
    if newline && multiline {
        out.push('\n');
    }
    if matches!(quote, Quote::Literal | Quote::MlLiteral) {
        out.push_str(s);
    } else {
        // Runs of `"` longer than the quoting allows get every extra quote escaped; the
        // run count restarts after each escape.
        let allowed = if multiline { 2 } else { 0 };
        let mut run = 0;
        for c in s.chars() {
            if c == '"' {
                run += 1;
                if run > allowed {
                    out.push_str("\\\"");
                    run = 0;
                    continue;
                }
                out.push('"');
                continue;
            }
            run = 0;
            match c {
                '\u{8}' => out.push_str("\\b"),
                '\t' => out.push_str("\\t"),
                '\n' if !multiline => out.push_str("\\n"),
                '\u{c}' => out.push_str("\\f"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                c if c != '\n' && (c < ' ' || c == '\u{7f}') => {
                    let _ = write!(out, "\\u{:04X}", u32::from(c));
                }
                c => out.push(c),
            }
        }
    }
    out.push_str(delimiter);
}

#[cfg(test)]
mod tests;
