//! Holds the outline (outline.rs) to the decoders' reading of the same requests: vouched
//! requests read alike, and what it declines is left to the decoders.

use super::envelope::{check_id, decode, keys, lift_string_member, Message};
use super::outline::outline;
use crate::fs::confined::carries_sandbox;

/// What the request layer reads of a request: id, method, params, keys, the sandbox
/// check and the base64 lift.
type Reading = (String, String, Option<String>, String, bool, Option<(String, Option<String>)>);

/// The decoder's reading; Err with the malformed text.
fn by_decoder(text: &str) -> Result<Option<Reading>, String> {
    let message = decode(text).map_err(|e| e.0)?;
    let Message::Request { method, id, params } = message else { return Ok(None) };
    let params = params.map(|p| p.get());
    let p = params.unwrap_or("{}");
    let lift = lift_string_member(p, "dataBase64", None);
    Ok(Some((
        id.into(),
        method.into_owned(),
        params.map(String::from),
        format!("{:?}", keys(p, None)),
        carries_sandbox(p),
        lift.map(|(rest, data)| (rest, data.map(String::from))),
    )))
}

fn by_outline(text: &str) -> Option<Result<Option<Reading>, String>> {
    let o = outline(text)?;
    if let Err(e) = check_id(&text[o.id.clone()]) {
        return Some(Err(e.0));
    }
    let params = o.params.clone().map(|r| &text[r]);
    let p = params.unwrap_or("{}");
    let members = o.members.as_deref();
    let lift = lift_string_member(p, "dataBase64", members);
    Some(Ok(Some((
        text[o.id.clone()].into(),
        text[o.method.clone()].into(),
        params.map(String::from),
        format!("{:?}", keys(p, members)),
        o.sandbox,
        lift.map(|(rest, data)| (rest, data.map(String::from))),
    ))))
}

/// The outline, when it vouches for `text`, reads what the decoders read.
pub(super) fn agrees(text: &str) -> Result<bool, String> {
    match by_outline(text) {
        None => Ok(false),
        Some(ours) => match by_decoder(text) {
            theirs if theirs == ours => Ok(true),
            theirs => Err(format!("{text:.300}\noutline: {ours:.300?}\ndecoder: {theirs:.300?}")),
        },
    }
}

#[test]
fn requests_are_outlined_as_the_decoders_read_them() {
    let data = "QUJD".repeat(2048);
    let vouched = [
        r#"{"id":1,"method":"fs/getMetadata","params":{"path":"/tmp"}}"#.to_string(),
        r#" { "method" : "process/read" , "id" : "a\"b" , "params" : { "processId" : "p" , "waitMs" : 10 } } "#.into(),
        r#"{"id":-7,"method":"x","params":null}"#.into(),
        r#"{"id":7,"method":"x"}"#.into(),
        r#"{"id":7,"method":"x","params":[1,{"sandbox":{}}],"jsonrpc":"2.0"}"#.into(),
        r#"{"id":7,"method":"x","result":{"a":[]},"error":null,"params":{}}"#.into(),
        r#"{"id":1.5e3,"method":"x","params":{"a":{"b":{"sandbox":{"x":1}}},"e":"\n\t\\"}}"#.into(),
        r#"{"id":"x","method":"x","params":{"other":{"p\u0061th":1}}}"#.replace("\\u0061", "a"),
        format!(r#"{{"id":1,"method":"fs/writeFile","params":{{"path":"/tmp/x","dataBase64":"{data}"}}}}"#),
        format!(r#"{{"id":1,"method":"fs/writeFile","params":{{"dataBase64":"{data}","path":"/tmp/x","sandbox":{{"k":[1,2]}}}}}}"#),
        format!(r#"{{"id":1,"method":"fs/writeFile","params":{{"path":"/a","dataBase64":"{data}","dataBase64":"QUJD"}}}}"#),
        format!(r#"{{"id":1,"method":"fs/writeFile","params":{{"path":"/a","dataBase64":"{data}\/"}}}}"#),
        format!(r#"{{"id":1,"method":"fs/writeFile","params":{{"path":"/a","dataBase64":["{data}"]}}}}"#),
        format!(r#"{{"id":1,"method":"fs/writeFile","params":{{"path":"/a","pad":"{data}","path":"/b","waitMs":3}}}}"#),
        format!(r#"{{"id":null,"method":"x","params":{{"pad":"{data}"}}}}"#),
        // Key members read without the decoder, or handed to it (`keys_of_members`).
        r#"{"id":1,"method":"x","params":{"processId":"p","handleId":"h","sourcePath":"/a/../b","destinationPath":"file:///c","waitMs":0}}"#.into(),
        r#"{"id":1,"method":"x","params":{"processId":null,"path":null,"waitMs":null}}"#.into(),
        r#"{"id":1,"method":"x","params":{"processId":"a\"b","waitMs":1}}"#.into(),
        r#"{"id":1,"method":"x","params":{"processId":"p","processId":"q"}}"#.into(),
        r#"{"id":1,"method":"x","params":{"processId":7,"path":"/a"}}"#.into(),
        r#"{"id":1,"method":"x","params":{"path":"/a","waitMs":1.0}}"#.into(),
        r#"{"id":1,"method":"x","params":{"path":"/a","waitMs":-1}}"#.into(),
        r#"{"id":1,"method":"x","params":{"path":"/a","waitMs":1e3}}"#.into(),
        r#"{"id":1,"method":"x","params":{"path":"/a","waitMs":18446744073709551616}}"#.into(),
        r#"{"id":1,"method":"x","params":{"path":"relative","waitMs":18446744073709551615}}"#.into(),
        r#"{"id":1,"method":"x","params":{"path":["/a"]}}"#.into(),
    ];
    for text in &vouched {
        assert_eq!(agrees(text), Ok(true), "{text:.200}");
    }
    // Left to the decoders, which say what is wrong (or decode what the outline does
    // not vouch for).
    let declined = [
        r#"[{"id":1,"method":"x"}]"#,
        r#"{"id":1,"method":"x","id":2}"#,
        r#"{"id":1,"method":"x","params":{},"params":{}}"#,
        r#"{"id":1,"method":"x\u0079"}"#,
        r#"{"id":1,"m\u0065thod":"x"}"#,
        r#"{"id":1,"method":"x","params":{"p\u0061th":"/x"}}"#,
        r#"{"id":1,"method":"x","params":{"a":"\u00e9"}}"#,
        r#"{"id":1,"method":5}"#,
        r#"{"id":1,"method":null}"#,
        r#"{"method":"initialized"}"#,
        r#"{"id":1,"result":{}}"#,
        r#"{"id":01,"method":"x"}"#,
        r#"{"id":1,"method":"x",}"#,
        r#"{"id":1,"method":"x"} x"#,
        "{\"id\":1,\"method\":\"x\",\"params\":{\"a\":\"\x01\"}}",
        r#"{"id":1,"method":"x","params":{"a":tru}}"#,
        r#"{"id":1 "method":"x"}"#,
        r#"{"id":1,"method":"x""#,
    ];
    for text in declined {
        assert_eq!(outline(text), None, "{text}");
    }
    let deep =
        format!(r#"{{"id":1,"method":"x","params":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    assert_eq!(outline(&deep), None);
    let deep_enough =
        format!(r#"{{"id":1,"method":"x","params":{}{}}}"#, "[".repeat(127), "]".repeat(127));
    assert_eq!(agrees(&deep_enough), Ok(true));
}
