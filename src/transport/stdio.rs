//! The stdio transport (§1.3): one JSON message per line on stdin and stdout, one client
//! connection for the life of the process. It owns stdin and stdout and nothing else.

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::outbound::{CloseReason, Closed, Outbound};
use crate::rpc::{Flow, Server, Transport};
use crate::shutdown;

/// stdout as a connection's writer; a failed write means the client is gone.
struct Stdout {
    out: Mutex<io::Stdout>,
    closed: AtomicBool,
}

impl Outbound for Stdout {
    fn send(&self, mut text: String) -> Result<(), Closed> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Closed);
        }
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
            drop(out);
            self.close(CloseReason::GoingAway);
            return Err(Closed);
        }
        Ok(())
    }

    fn close(&self, _: CloseReason) {
        // The one connection ending ends the daemon (§1.3).
        self.closed.store(true, Ordering::SeqCst);
        shutdown::trigger();
    }
}

/// How long the end of stdin waits for requests already received to be answered.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// Serves stdin/stdout until stdin ends or shutdown is requested.
pub fn serve(server: &Arc<Server>) {
    let out = Arc::new(Stdout { out: Mutex::new(io::stdout()), closed: AtomicBool::new(false) });
    let conn = server.connect(out, Transport::Stdio);
    let limit = server.config.max_message_bytes;
    let reader = Arc::clone(&conn);
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut stdin, &mut line, limit) {
                Ok(Line::End) | Err(_) => break,
                Ok(Line::TooLong) => {
                    let _ = reader.malformed(&format!("message exceeds the {limit}-byte limit"));
                }
                Ok(Line::Complete) => {
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let flow = match String::from_utf8(std::mem::take(&mut line)) {
                        Ok(text) => reader.handle(Box::new(text)),
                        Err(e) => reader.malformed(&format!("line is not UTF-8: {e}")),
                    };
                    if flow == Flow::Close {
                        break;
                    }
                }
            }
        }
        // A client that writes its requests and closes stdin still gets its answers.
        reader.drain(DRAIN_GRACE);
        shutdown::trigger();
    });
    if let Err(e) = spawned {
        log::error!("cannot start the stdin reader: {e}");
        return;
    }
    shutdown::wait(None);
    conn.closed();
}

enum Line {
    Complete,
    TooLong,
    End,
}

/// Reads one line (without its `\n`) of at most `limit` bytes; a longer one is skipped.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, limit: usize) -> io::Result<Line> {
    let mut too_long = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long { Line::End } else { Line::Complete });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let found = done > chunk.len();
        if !too_long && line.len() + chunk.len() <= limit {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        input.consume(done);
        if found {
            return Ok(if too_long { Line::TooLong } else { Line::Complete });
        }
    }
}
