//! The log line format: every line starts with an RFC 3339 UTC timestamp with milliseconds
//! and the level (`2026-12-04T16:47:40.123Z INFO  exec_server::cloud: …`), or, with
//! `--log-format json` / `EXEC_SERVER_LOG_FORMAT=json`, is one JSON object
//! `{"ts","level","target","msg", …fields}`. The fields are the structured key-values a call
//! site attached (`log::debug!(method = m, session = s; "…")`: `processId`, `pid`, `session`,
//! `method`, `requestId`, `elapsedUs`, …), integers and booleans as such, anything else as a
//! string; text lines carry the same facts in the message. `RUST_LOG` filters as before.
//! As a last line of defence every message and field is scrubbed of URL query strings, URL
//! passwords and bearer tokens, whoever logged it (our code already leaves them out;
//! dependencies at debug level might not), and dependencies' trace lines (raw wire dumps)
//! are dropped.
//! It owns only formatting; it knows nothing of the modes.

use std::borrow::Cow;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment fallback of `--log-format`.
pub const LOG_FORMAT_ENV: &str = "EXEC_SERVER_LOG_FORMAT";

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `text` or `json`; anything else is a usage error (the message).
    pub fn parse(value: &str, from: &str) -> Result<LogFormat, String> {
        match value.trim() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{from} must be `text` or `json`, not `{other}`")),
        }
    }
}

/// Installs the stderr logger (`RUST_LOG`, default `exec_server=info`) in `format`.
pub fn init(format: LogFormat) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("exec_server=info"))
        .target(env_logger::Target::Stderr)
        .format(move |out, record| {
            // Dependencies' trace lines dump raw request bytes (headers, signed URLs, hex
            // dumps no scrubbing can read); release builds compile them out, debug builds
            // drop them here so no build logs a secret at any level.
            if record.level() == log::Level::Trace && !record.target().starts_with("exec_server") {
                return Ok(());
            }
            let ts = timestamp(SystemTime::now());
            let msg = record.args().to_string();
            let msg = scrub(&msg);
            match format {
                LogFormat::Text => {
                    writeln!(out, "{ts} {:<5} {}: {msg}", record.level(), record.target())
                }
                LogFormat::Json => {
                    // Written by hand so the keys keep this order (serde_json sorts them).
                    let text = |s: &str| serde_json::Value::from(s).to_string();
                    let mut fields = Fields(String::new());
                    let _ = record.key_values().visit(&mut fields);
                    writeln!(
                        out,
                        "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"target\":{},\"msg\":{}{}}}",
                        record.level(),
                        text(record.target()),
                        text(&msg),
                        fields.0
                    )
                }
            }
        })
        .init();
}

/// A record's structured fields as `,"key":value` JSON members: integers and booleans as
/// such, everything else as its (scrubbed) display text.
struct Fields(String);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let key = serde_json::Value::from(key.as_str()).to_string();
        let value = if let Some(n) = value.to_u64() {
            n.to_string()
        } else if let Some(n) = value.to_i64() {
            n.to_string()
        } else if let Some(b) = value.to_bool() {
            b.to_string()
        } else {
            serde_json::Value::from(scrub(&value.to_string()).as_ref()).to_string()
        };
        self.0.push(',');
        self.0.push_str(&key);
        self.0.push(':');
        self.0.push_str(&value);
        Ok(())
    }
}

/// RFC 3339 UTC with milliseconds: `2026-12-04T16:47:40.123Z`.
pub fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (proleptic Gregorian), H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Removes what must never reach a log: the query string of any URL (signed rendezvous
/// URLs), the password in `scheme://user:password@host`, and the token after `Bearer `.
pub fn scrub(msg: &str) -> Cow<'_, str> {
    if !msg.contains("://") && !msg.contains("Bearer ") {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("://").or_else(|| rest.find("Bearer ")) {
        let bearer = rest[at..].starts_with("Bearer ");
        if bearer {
            let start = at + "Bearer ".len();
            out.push_str(&rest[..start]);
            out.push_str("<redacted>");
            let end = rest[start..]
                .find(|c: char| c.is_whitespace() || c == '"')
                .map_or(rest.len(), |e| start + e);
            rest = &rest[end..];
            continue;
        }
        let start = at + 3;
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .map_or(rest.len(), |e| start + e);
        let url = &rest[start..end];
        let url = match url.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:<redacted>@{host}"),
                None => url.to_owned(),
            },
            _ => url.to_owned(),
        };
        match url.split_once('?') {
            Some((before, _)) => {
                out.push_str(before);
                out.push_str("?<redacted>");
            }
            None => out.push_str(&url),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(784_111_777_042);
        assert_eq!(timestamp(t), "1994-11-06T08:49:37.042Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn secrets_are_scrubbed() {
        assert_eq!(scrub("plain"), "plain");
        assert_eq!(
            scrub("dial wss://h:1/rv/x?sig=SECRET failed"),
            "dial wss://h:1/rv/x?<redacted> failed"
        );
        assert_eq!(scrub("via http://u:pw@p:3128 ok"), "via http://u:<redacted>@p:3128 ok");
        assert_eq!(scrub("Authorization: Bearer abc.def x"), "Authorization: Bearer <redacted> x");
        assert_eq!(scrub("a http://h/p b https://k/?q=1"), "a http://h/p b https://k/?<redacted>");
    }
}
