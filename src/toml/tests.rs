//! Tests of `toml`: one unit test per parsing and writing rule, and differential property
//! tests against the `toml` crate (0.9, `preserve_order`, a dev-dependency), which is what
//! upstream codex writes its layers with. For generated documents, for mutations of them,
//! and for tables the crate writes, our parse and write must give the crate's text, and we
//! must reject exactly what the crate rejects. `PROPTEST_CASES` sets the number of cases.

use proptest::prelude::*;

use super::{parse, to_string, Table, Value, MAX_DEPTH};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 2048;

fn config() -> ProptestConfig {
    crate::proptest_config::config(DEFAULT_CASES)
}

/// What the crate makes of `text`: the written table, or the error's offset and message.
fn crate_result(text: &str) -> Result<String, (usize, String)> {
    match text.parse::<::toml::Table>() {
        Ok(t) => Ok(::toml::to_string(&t).expect("a parsed table serializes")),
        Err(e) => Err((e.span().map_or(0, |s| s.start), e.message().to_string())),
    }
}

fn our_result(text: &str) -> Result<String, (usize, String)> {
    parse(text).map(|t| to_string(&t)).map_err(|e| (e.offset, e.message))
}

/// Ours and the crate's agree on `text`: the same text out, or both an error.
fn agree(text: &str) -> Result<(), TestCaseError> {
    match (our_result(text), crate_result(text)) {
        (Ok(ours), Ok(theirs)) => prop_assert_eq!(ours, theirs, "input {:?}", text),
        (Err(_), Err(_)) => {}
        (ours, theirs) => {
            prop_assert!(false, "input {:?}: ours {:?}, crate {:?}", text, ours, theirs)
        }
    }
    Ok(())
}

fn written(text: &str) -> String {
    to_string(&parse(text).unwrap())
}

fn error(text: &str) -> (usize, String) {
    let e = parse(text).unwrap_err();
    (e.offset, e.message)
}

// ---- unit tests: parsing -------------------------------------------------------------

#[test]
fn keys_bare_quoted_dotted() {
    let t = parse("a-b_1 = 1\n\"q k\" = 2\n'lit' = 3\n x . \"y\" . 'z' = 4\n").unwrap();
    assert_eq!(t.get("a-b_1"), Some(&Value::Integer(1)));
    assert_eq!(t.get("q k"), Some(&Value::Integer(2)));
    assert_eq!(t.get("lit"), Some(&Value::Integer(3)));
    let x = t.get("x").and_then(Value::as_table).and_then(|x| x.get("y"));
    assert_eq!(x.and_then(Value::as_table).and_then(|y| y.get("z")), Some(&Value::Integer(4)));
}

#[test]
fn strings_and_escapes() {
    let t = parse(concat!(
        "a = \"\\b\\t\\n\\f\\r\\\"\\\\\\e\\x41\\u00e9\\U0001F600\"\n",
        "b = 'C:\\x'\n",
        "c = \"\"\"\nl1\\\n   l2 \\  \r\n  l3\"\"\"\n",
        "d = '''\nraw\\n ''\n'''\n",
        "e = \"\"\"a\r\nb\"\"\"\n",
        "f = \"\"\"q\"\"\"\"\"\n",
    ))
    .unwrap();
    assert_eq!(t.get("a").and_then(Value::as_str), Some("\u{8}\t\n\u{c}\r\"\\\u{1b}Aé😀"));
    assert_eq!(t.get("b").and_then(Value::as_str), Some("C:\\x"));
    assert_eq!(t.get("c").and_then(Value::as_str), Some("l1l2 l3"));
    assert_eq!(t.get("d").and_then(Value::as_str), Some("raw\\n ''\n"));
    assert_eq!(t.get("e").and_then(Value::as_str), Some("a\r\nb"));
    assert_eq!(t.get("f").and_then(Value::as_str), Some("q\"\""));
}

#[test]
fn numbers() {
    let t = parse("a = +1_000\nb = -0\nc = 0xdead_BEEF\nd = 0o17\ne = 0b101\nf = -9223372036854775808\ng = 1e3\nh = -1.5E-2\ni = -inf\nj = -nan\n").unwrap();
    let get = |k: &str| t.get(k).cloned();
    assert_eq!(get("a"), Some(Value::Integer(1000)));
    assert_eq!(get("b"), Some(Value::Integer(0)));
    assert_eq!(get("c"), Some(Value::Integer(0xdead_beef)));
    assert_eq!(get("d"), Some(Value::Integer(0o17)));
    assert_eq!(get("e"), Some(Value::Integer(5)));
    assert_eq!(get("f"), Some(Value::Integer(i64::MIN)));
    assert_eq!(get("g"), Some(Value::Float(1000.0)));
    assert_eq!(get("h"), Some(Value::Float(-0.015)));
    assert_eq!(get("i"), Some(Value::Float(f64::NEG_INFINITY)));
    assert!(matches!(get("j"), Some(Value::Float(f)) if f.is_nan() && f.is_sign_positive()));
}

#[test]
fn datetimes_are_kept_as_toml_writes_them() {
    assert_eq!(
        written("a = 1979-05-27 07:32:00z\nb = 1979-05-27T00:32:00.1234567891-00:00\nc = 07:32\nd = 1980-02-29\ne = 1979-05-27t07:32:00.500+05:30\n"),
        "a = 1979-05-27T07:32:00Z\nb = 1979-05-27T00:32:00.123456789+00:00\nc = 07:32:00\nd = 1980-02-29\ne = 1979-05-27T07:32:00.5+05:30\n"
    );
    for bad in [
        "a = 1979-02-29",
        "a = 1979-13-01",
        "a = 24:00:00",
        "a = 07:32:00Z",
        "a = 1979-5-27",
        "a = 1979-05-27T",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn arrays_and_inline_tables() {
    let text = "a = [ 1, 'x', [2, []], { b = 1, c.d = 2 }, ] # c\nb = [\n  1, # one\n  2,\n]\nc = {\n  x = 1, # 1.1\n  y = {},\n}\n";
    assert_eq!(
        written(text),
        "a = [1, \"x\", [2, []], { b = 1, c = { d = 2 } }]\nb = [1, 2]\n\n[c]\nx = 1\n\n[c.y]\n"
    );
}

#[test]
fn headers_and_arrays_of_tables() {
    let text = "top = 1\n[a.b]\nx = 1\n[a]\ny = 2\n[[t]]\nn = 1\n[t.sub]\nm = 2\n[[t]]\n";
    assert_eq!(
        written(text),
        "top = 1\n\n[a]\ny = 2\n\n[a.b]\nx = 1\n\n[[t]]\nn = 1\n\n[t.sub]\nm = 2\n\n[[t]]\n"
    );
}

#[test]
fn a_table_named_first_in_a_longer_header_takes_its_own_headers_place() {
    // Found by `mutated_documents_agree`: `b` moves behind `a` once `[b]` appears.
    let text = "[b.a]\na = []\n[a]\n[b]";
    assert_eq!(written(text), "[a]\n\n[b.a]\na = []\n");
    assert_eq!(our_result(text), crate_result(text));
}

#[test]
fn newlines_around_the_equals_sign_of_an_inline_table_member() {
    // Found by `mutated_documents_agree` (TOML 1.1, which the crate accepts).
    let text = "a={ a\n = 0 }";
    assert_eq!(written(text), "[a]\na = 0\n");
    assert_eq!(our_result(text), crate_result(text));
}

#[test]
fn crlf_bom_and_comments() {
    assert_eq!(written("\u{feff}# c\r\na = 1 # c\r\n\r\n[b] # c\r\n"), "a = 1\n\n[b]\n");
    assert!(parse("a = 1\rb = 2").is_err());
    assert!(parse("a = 1 # \u{1}").is_err());
}

#[test]
fn redefinitions_are_errors() {
    for bad in [
        "a = 1\na = 2",
        "[a]\n[a]",
        "a = 1\n[a]",
        "[a.b]\n[a]\nb = 1",
        "a.b = 1\na = 2",
        "a.b.c = 1\n[a]",
        "a.b.c = 1\n[a.b]",
        "[a.b.c]\n[a]\nb.d = 1",
        "[a]\nx.y = 1\n[a.x]",
        "[[a]]\n[a]",
        "[a]\n[[a]]",
        "a = []\n[[a]]",
        "a = {b = 1}\na.c = 2",
        "a = {b = 1}\n[a.c]",
        "a = { b = 1, b = 2 }",
        "a = { b.c = 1, b = 2 }",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    // But a header may pass through dotted tables, and define an implicit one once.
    assert_eq!(written("a.b = 1\n[a.c]"), "[a]\nb = 1\n\n[a.c]\n");
    assert_eq!(written("[a.b]\n[a]\nx = 1"), "[a]\nx = 1\n\n[a.b]\n");
}

#[test]
fn common_errors_are_placed_and_worded_as_the_crate() {
    let cases: &[(&str, usize, &str)] = &[
        ("model = gpt\n", 8, "string values must be quoted, expected literal string"),
        ("a =\n", 3, "string values must be quoted, expected literal string"),
        ("a = \"abc\nx = 1\n", 8, "invalid basic string, expected `\"`"),
        ("a = 'abc", 8, "invalid literal string, expected `'`"),
        ("a = \"\"\"x", 8, "invalid multi-line basic string, expected `\"`"),
        ("a = 1\na = 2\n", 6, "duplicate key"),
        ("[a]\nb = 1\n[a]\n", 11, "duplicate key"),
        ("a 1\n", 2, "key with no value, expected `=`"),
        ("= 1\n", 0, "unquoted keys cannot be empty, expected letters, numbers, `-`, `_`"),
        ("a = [1,", 7, "unclosed array, expected `]`"),
        ("[a\n", 2, "unclosed table, expected `]`"),
        ("a = tru\n", 4, "invalid boolean, expected `true`"),
        (
            "a = \"\\q\"\n",
            6,
            "missing escaped value, expected `b`, `e`, `f`, `n`, `r`, `\\`, `\"`, `x`, `u`, `U`",
        ),
        (
            "a = {b = 1}\na.c = 2\n",
            12,
            "cannot extend value of type inline table with a dotted key",
        ),
        ("a = 01\n", 4, "unexpected leading zero, expected nothing"),
        ("a = 1e400\n", 4, "floating-point number overflowed"),
    ];
    for (text, offset, message) in cases {
        assert_eq!(error(text), (*offset, message.to_string()), "{text:?}");
        assert_eq!(crate_result(text), Err((*offset, message.to_string())), "crate on {text:?}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| format!("a = {}{}", "[".repeat(n), "]".repeat(n));
    assert!(parse(&deep(MAX_DEPTH - 1)).is_ok());
    assert!(error(&deep(100_000)).1.contains("nesting deeper than 128 levels"));
    let inline = format!("a = {}{}", "{b = ".repeat(100_000), "}".repeat(100_000));
    assert!(error(&inline).1.contains("nesting deeper"));
    let header = format!("[{}]", vec!["a"; 100_000].join("."));
    assert!(error(&header).1.contains("nesting deeper"));
    let dotted = format!("{} = 1", vec!["a"; 100_000].join("."));
    assert!(error(&dotted).1.contains("nesting deeper"));
    let mixed = format!("[{}]\n{} = 1", vec!["a"; 100].join("."), vec!["b"; 100].join("."));
    assert!(error(&mixed).1.contains("nesting deeper"));
}

// ---- unit tests: writing -------------------------------------------------------------

#[test]
fn string_quoting() {
    let cases: &[(&str, &str)] = &[
        ("", "\"\""),
        ("a b/c:d.e", "\"a b/c:d.e\""),
        ("it's", "\"it's\""),
        ("say \"hi\"", "'say \"hi\"'"),
        ("C:\\dir", "'C:\\dir'"),
        ("tab\there", "\"tab\\there\""),
        ("l1\nl2", "\"\"\"\nl1\nl2\"\"\""),
        ("it's \"q\"", "\"\"\"it's \"q\"\"\"\""),
        ("'\"\\", "''''\"\\'''"),
        ("x\u{1}", "\"x\\u0001\""),
        ("a\rb", "\"a\\rb\""),
        ("\u{7f}", "\"\\u007F\""),
        ("a\nb\"\"\"c'''", "\"\"\"\na\nb\"\"\\\"c'''\"\"\""),
        ("'''\"\"\"\\", "\"'''\\\"\\\"\\\"\\\\\""),
        ("é", "\"é\""),
    ];
    for (s, want) in cases {
        let mut t = Table::new();
        t.insert("s".into(), Value::String(s.to_string()));
        assert_eq!(to_string(&t), format!("s = {want}\n"), "{s:?}");
    }
}

#[test]
fn key_quoting() {
    let cases: &[(&str, &str)] = &[
        ("a-b_C9", "a-b_C9"),
        ("", "\"\""),
        ("a.b", "\"a.b\""),
        ("a b", "\"a b\""),
        ("a\"b", "'a\"b'"),
        ("a\\b", "'a\\b'"),
        ("a'\"b", "\"a'\\\"b\""),
        ("a\tb", "\"a\\tb\""),
        ("a\nb", "\"a\\nb\""),
        ("é", "\"é\""),
    ];
    for (k, want) in cases {
        let mut t = Table::new();
        t.insert(k.to_string(), Value::Integer(1));
        assert_eq!(to_string(&t), format!("{want} = 1\n"), "{k:?}");
    }
}

#[test]
fn floats_and_integers() {
    assert_eq!(
        written("a = [1.0, 1e20, 1.5e-7, -0.0, +inf, -inf, nan, 0x10, 1_000, 3.14, 1e100]"),
        format!("a = [1.0, 100000000000000000000.0, 0.00000015, -0.0, inf, -inf, nan, 16, 1000, 3.14, 1{}.0]\n", "0".repeat(100))
    );
}

#[test]
fn section_layout() {
    assert_eq!(written(""), "");
    assert_eq!(written("[a]"), "[a]\n");
    assert_eq!(written("[a.b.c]"), "[a.b.c]\n");
    assert_eq!(
        written("a.b.c = 1\nd = 2\n[e]\nf.g = 1"),
        "d = 2\n\n[a.b]\nc = 1\n\n[e.f]\ng = 1\n"
    );
    assert_eq!(written("t = [{a=1}, {b=2}]\nu = 1"), "u = 1\n\n[[t]]\na = 1\n\n[[t]]\nb = 2\n");
    assert_eq!(written("t = [{a=1}, 2]"), "t = [{ a = 1 }, 2]\n");
    assert_eq!(written("t = [[{a=1}]]"), "t = [[{ a = 1 }]]\n");
    assert_eq!(
        written("[a]\nb = [{c=1}]\nd = 2\n[a.e]\n"),
        "[a]\nd = 2\n\n[[a.b]]\nc = 1\n\n[a.e]\n"
    );
    assert_eq!(written("[a]\n[[a.b]]\n[a.b.c]\n[[a.b]]"), "[[a.b]]\n\n[a.b.c]\n\n[[a.b]]\n");
    assert_eq!(written("\"x.y\".'z w' = {}"), "[\"x.y\".\"z w\"]\n");
}

// ---- differential tests against the crate --------------------------------------------

/// A few keys, so that generated documents often collide (duplicates, redefinitions).
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[ab]",
        1 => "[a-c0-9_-]{1,3}",
        1 => "\"([ab.# '\\\\]|\\\\[nt\"\\\\]|\\\\u00e9){0,3}\"",
        1 => "'[ab.\" ]{0,3}'",
    ]
}

fn dotted_key() -> impl Strategy<Value = String> {
    (prop::collection::vec(key_text(), 1..4), prop::sample::select(vec![".", " . ", ".\t"]))
        .prop_map(|(keys, sep)| keys.join(sep))
}

fn scalar_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?(0|[1-9](_?[0-9]){0,6}|0[0-9])",
        "0x[0-9a-fA-F_]{1,6}|0o[0-8_]{1,4}|0b[012_]{1,8}|[+-]0x1",
        "[+-]?(0|[1-9][0-9_]{0,3})(\\.[0-9_]{0,4})?([eE][+-]?[0-9_]{0,3})?",
        "[+-]?(inf|nan)|true|false|tru|nope",
        "(19[0-9]{2}|2000)-(0[0-9]|1[0-3])-[0-3][0-9]([Tt ]([0-2][0-9]:[0-6][0-9](:[0-6][0-9](\\.[0-9]{0,11})?)?([Zz]|[+-][0-2][0-9]:[0-6][0-9])?)?)?",
        "[0-2][0-9]:[0-6][0-9](:[0-6][0-9](\\.[0-9]{1,4})?)?Z?",
        "\"([a-z '#=.:/é]|\\\\[btnfre\"\\\\q]|\\\\u00[0-9a-f]{2}|\\\\x[0-9a-f]{2}|\\\\UD800|\\\\U0001F600|\t|\u{1})*\"",
        "'([a-z \"#\\\\é]|\t)*'",
        "\"\"\"\n?([a-z \"\\\\]|\n|\r\n|\\\\[nt\"]|\\\\ *\n *|\"\"|\u{7f})*\"\"\"",
        "'''\n?([a-z \"\\\\']|\n|'')*'''",
    ]
}

fn value_text() -> impl Strategy<Value = String> {
    scalar_text().prop_recursive(4, 24, 5, |inner| {
        let sep = prop::sample::select(vec![", ", ",", " ,\n ", ",# c\n", ",,", " "]);
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), sep.clone(), any::<bool>()).prop_map(
                |(items, sep, trailing)| {
                    let comma = if trailing && !items.is_empty() { "," } else { "" };
                    format!("[{}{comma}]", items.join(sep))
                }
            ),
            (prop::collection::vec((dotted_key(), inner), 0..4), sep, any::<bool>()).prop_map(
                |(pairs, sep, trailing)| {
                    let pairs: Vec<String> =
                        pairs.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    let comma = if trailing && !pairs.is_empty() { "," } else { "" };
                    format!("{{ {}{comma} }}", pairs.join(sep))
                }
            ),
        ]
    })
}

fn line_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (dotted_key(), "[ \t]{0,2}", value_text(), "( # [a-z ]*)?")
            .prop_map(|(k, ws, v, c)| format!("{k}{ws}={ws}{v}{c}")),
        2 => (prop::collection::vec(key_text(), 1..4), any::<bool>())
            .prop_map(|(keys, array)| if array {
                format!("[[{}]]", keys.join("."))
            } else {
                format!("[ {} ]", keys.join("."))
            }),
        1 => "(# [a-z \t]*)?",
    ]
}

fn document() -> impl Strategy<Value = String> {
    (prop::collection::vec(line_text(), 0..12), any::<bool>())
        .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }))
}

/// A document with a few bytes inserted, deleted or replaced.
fn mutated() -> impl Strategy<Value = String> {
    let edit = (
        any::<prop::sample::Index>(),
        0..3usize,
        prop::sample::select(vec![
            "", "[", "]", "{", "}", "=", ".", ",", "\"", "'", "#", "\n", "\r", " ", "a", "1", "\\",
            "_", "-", ":", "é",
        ]),
    );
    (document(), prop::collection::vec(edit, 1..4)).prop_map(|(mut doc, edits)| {
        for (at, delete, insert) in edits {
            let mut i = if doc.is_empty() { 0 } else { at.index(doc.len() + 1) };
            while !doc.is_char_boundary(i) {
                i -= 1;
            }
            let mut end = i;
            for _ in 0..delete {
                if let Some(c) = doc[end..].chars().next() {
                    end += c.len_utf8();
                }
            }
            doc.replace_range(i..end, insert);
        }
        doc
    })
}

/// A table as the crate represents it, with any strings and numbers.
fn crate_value() -> impl Strategy<Value = ::toml::Value> {
    use ::toml::Value as V;
    let text = "[ -~\u{0}-\u{1f}\u{7f}é😀]{0,8}";
    let leaf = prop_oneof![
        text.prop_map(V::String),
        any::<i64>().prop_map(V::Integer),
        any::<f64>().prop_map(V::Float),
        prop::sample::select(vec![
            1e15,
            1e16,
            1e-7,
            0.1,
            123456789.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            -0.0
        ])
        .prop_map(V::Float),
        any::<bool>().prop_map(V::Boolean),
        prop::sample::select(vec![
            "1979-05-27T07:32:00Z",
            "1979-05-27T07:32:00.5-07:00",
            "1979-05-27",
            "07:32:00.000001",
            "1979-05-27T07:32:00"
        ])
        .prop_map(|d| V::Datetime(d.parse().expect("a valid datetime"))),
    ];
    leaf.prop_recursive(4, 32, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(V::Array),
            prop::collection::vec(crate_table_of(inner.clone()), 1..3)
                .prop_map(|ts| V::Array(ts.into_iter().map(V::Table).collect())),
            crate_table_of(inner).prop_map(V::Table),
        ]
    })
}

fn crate_table_of(
    value: impl Strategy<Value = ::toml::Value>,
) -> impl Strategy<Value = ::toml::Table> {
    let key = prop_oneof![4 => "[a-c]", 1 => "[ -~\t\n\u{1}é]{0,4}"];
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| pairs.into_iter().collect())
}

/// The crate's table as ours.
fn ours(t: &::toml::Table) -> Table {
    let mut out = Table::new();
    for (k, v) in t {
        out.insert(k.clone(), our_value(v));
    }
    out
}

fn our_value(v: &::toml::Value) -> Value {
    use ::toml::Value as V;
    match v {
        V::String(s) => Value::String(s.clone()),
        V::Integer(i) => Value::Integer(*i),
        V::Float(f) => Value::Float(*f),
        V::Boolean(b) => Value::Boolean(*b),
        V::Datetime(d) => Value::Datetime(d.to_string()),
        V::Array(a) => Value::Array(a.iter().map(our_value).collect()),
        V::Table(t) => Value::Table(ours(t)),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_documents_agree(doc in document()) {
        agree(&doc)?;
    }

    #[test]
    fn mutated_documents_agree(doc in mutated()) {
        agree(&doc)?;
    }

    #[test]
    fn crate_written_tables_agree(t in crate_table_of(crate_value())) {
        let text = ::toml::to_string(&t).expect("a table serializes");
        // Our writer on the same table.
        prop_assert_eq!(to_string(&ours(&t)), text.clone());
        // Our parser on the crate's text.
        agree(&text)?;
    }
}

#[test]
fn malformed_corpus_is_rejected_like_the_crate() {
    let corpus = [
        "a = 1.",
        "a = 1__0",
        "a = 9223372036854775808",
        "a = 0xffffffffffffffff",
        "a = +0x1",
        "a = 0_1",
        "a = 1.e5",
        "a = .5",
        "a = 00.5",
        "a = -01.5",
        "a = 1_e5",
        "a = 0x_1",
        "a = 0b102",
        "a = 1e",
        "a = 1e+",
        "a = 1.5.3",
        "a = --1",
        "a = 1979-05-27T07:32:00.Z",
        "a = 1979-05-27T07:32:00+24:00",
        "a = 1 b = 2",
        "a = 1979-05-27T07",
        "a = 07:32:0",
        "[ [a]]",
        "[[a] ]",
        "[a]]",
        "[]",
        "[[]]",
        "[a.]",
        "[.a]",
        "a. = 1",
        ".a = 1",
        "\"\"\"a\"\"\" = 1",
        "'''a''' = 1",
        "a = \"\\uD800\"",
        "a = \"\\x7\"",
        "a = \"\\U00110000\"",
        "s = \"\"\"a\"\"\"\"\"\"",
        "s = '''a''''''",
        "s = \"\"\"\\  x\"\"\"",
        "a = [,]",
        "a = [1 2]",
        "a = [1,,]",
        "a = {,}",
        "a = {a=1,,}",
        "a = {a}",
        "a = {a=1 b=2}",
        "a = \"x\r\ny\"",
        "a = 'x\u{1}'",
        "a = \"x\u{7f}\"",
        "a = 1 # \u{7f}",
        "a = 1\n\rb = 2",
        "a = b = 1",
        "a = 1979-02-30",
        "a = 2000-04-31",
        "a = tr ue",
        "a = True",
        "a = NaN",
        "a = infinity",
        "[a]\n[a.b]\n[a]",
        "[[a]]\na = 1\n[[a]]\na = 1\na = 2",
        "a = [{}]\n[a.b]",
        "[a]\nb = 1\n[a.b]",
        "a = {}\n[a]",
    ];
    for text in corpus {
        assert!(crate_result(text).is_err(), "the crate accepts {text:?}");
        assert!(parse(text).is_err(), "we accept {text:?}: {:?}", our_result(text));
    }
}
