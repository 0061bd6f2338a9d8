//! A client's websocket frames (RFC 6455 §5), read from the socket into our own buffers:
//! headers, unmasking, the control-frame rules, fragments joined into one message under the
//! size limit, text checked as UTF-8. Tungstenite's reader zero-fills its whole read buffer
//! before every read and moves each payload through two more buffers; this one reads small
//! frames into one reused buffer and a large payload straight into the message that will
//! hold it. It writes nothing: what a Ping, a Close or a failure is answered with is
//! websocket.rs's to send.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;

/// The reused buffer for headers and small frames; a payload left larger than half of it
/// is read straight into its message instead.
const BUFFER_BYTES: usize = 32 << 10;
/// The most of a large payload read at once: small enough that unmasking and checking it
/// find it still in cache after the kernel's copy.
const DIRECT_READ_BYTES: usize = 256 << 10;
/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER_BYTES: usize = 14;
/// Control frames carry at most this much (§5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's Close, as received (`None` when it had no payload).
    Close(Option<CloseFrame>),
}

/// Why the connection must be failed.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// A frame the protocol forbids (close 1002); the text says which rule.
    Protocol(&'static str),
    /// A frame or message over the size limit (close 1009).
    TooBig { size: u64, max: usize },
    /// A text message, or a Close reason, that is not UTF-8 (close 1007).
    Utf8,
}

/// What one call of `Frames::next` produced.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// Nothing complete yet and the socket has nothing more for now.
    WouldBlock,
    /// The peer closed the TCP connection.
    Eof,
    Failed(Failure),
    Io(io::Error),
}

/// Somewhere frames come from: a socket, or a script of reads in tests.
pub trait Source {
    /// Reads into `spare` (uninitialised memory) like read(2); Ok(0) at end of stream.
    fn read_into(&mut self, spare: &mut [MaybeUninit<u8>]) -> io::Result<usize>;
}

/// A socket read with read(2), so the destination needs no zero-filling first.
pub struct Fd(pub RawFd);

impl Source for Fd {
    fn read_into(&mut self, spare: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        // SAFETY: `spare` is writable memory of the given length; read(2) initialises what
        // it reports.
        let n = unsafe { libc::read(self.0, spare.as_mut_ptr().cast(), spare.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// The frame being received.
struct Header {
    fin: bool,
    /// Any of RSV1–3: no extension is ever negotiated, so always a violation.
    reserved: bool,
    masked: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Payload bytes of this frame not yet received.
    left: u64,
    /// Payload bytes received so far (the mask's phase).
    done: u64,
}

impl Header {
    /// Unmasks `piece`, the next bytes of this frame's payload, and counts them in.
    fn received(&mut self, piece: &mut [u8]) {
        unmask(piece, self.mask, self.done);
        self.left -= piece.len() as u64;
        self.done += piece.len() as u64;
    }
}

/// The data message being assembled.
struct Message {
    text: bool,
    bytes: Vec<u8>,
    /// How much of a text message is known to be UTF-8: checked as each piece arrives,
    /// while it is in cache, rather than in one more pass over the whole message.
    checked: usize,
}

impl Message {
    /// Checks the UTF-8 of what arrived since the last check; a character cut by the end
    /// of a piece is checked again with the next one.
    fn check(&mut self) -> Result<(), Stop> {
        if !self.text {
            return Ok(());
        }
        // ASCII (JSON's usual text, and all of base64) is skipped 64 bytes at a time;
        // the standard check takes over from the first other byte.
        self.checked += ascii_prefix(&self.bytes[self.checked..]);
        match std::str::from_utf8(&self.bytes[self.checked..]) {
            Ok(_) => self.checked = self.bytes.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(Stop::Failed(Failure::Utf8)),
        }
        Ok(())
    }
}

/// One connection's inbound frames.
pub struct Frames {
    buf: Vec<u8>,
    /// Where the unparsed bytes in `buf` begin.
    at: usize,
    header: Option<Header>,
    message: Option<Message>,
    /// A control frame's payload while it arrives.
    control: Vec<u8>,
    max_message: usize,
}

impl Frames {
    /// `already` holds bytes read past the HTTP head during the handshake.
    pub fn new(already: &[u8], max_message: usize) -> Frames {
        let mut buf = Vec::with_capacity(BUFFER_BYTES.max(already.len()));
        buf.extend_from_slice(already);
        Frames { buf, at: 0, header: None, message: None, control: Vec::new(), max_message }
    }

    /// The next complete message or control frame, reading from `source` as needed.
    pub fn next(&mut self, source: &mut impl Source) -> Next {
        loop {
            match self.step(source) {
                Ok(Some(event)) => return Next::Event(event),
                Ok(None) => {}
                Err(Stop::Failed(failure)) => return Next::Failed(failure),
                Err(Stop::Read(Ok(()))) => return Next::Eof,
                Err(Stop::Read(Err(e))) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Next::WouldBlock
                }
                Err(Stop::Read(Err(e))) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(Stop::Read(Err(e))) => return Next::Io(e),
            }
        }
    }

    /// Advances by one header, one payload piece or one read.
    fn step(&mut self, source: &mut impl Source) -> Result<Option<Event>, Stop> {
        let Some(header) = &mut self.header else {
            match parse_header(&self.buf[self.at..]) {
                Some((header, used)) => {
                    self.at += used;
                    self.begin(header)?;
                    // A frame with an empty payload is complete at once.
                    return self.finish_if_done();
                }
                None => return self.fill(source, MAX_HEADER_BYTES).map(|()| None),
            }
        };
        let buffered = self.buf.len() - self.at;
        let control = header.opcode & 0x8 != 0;
        if buffered > 0 {
            let take = buffered.min(usize::try_from(header.left).unwrap_or(usize::MAX));
            let piece = &self.buf[self.at..self.at + take];
            if control {
                let from = self.control.len();
                self.control.extend_from_slice(piece);
                header.received(&mut self.control[from..]);
            } else {
                let message = self.message.as_mut().expect("a data frame has its message");
                let from = message.bytes.len();
                message.bytes.extend_from_slice(piece);
                header.received(&mut message.bytes[from..]);
                message.check()?;
            }
            self.at += take;
            return self.finish_if_done();
        }
        if !control && header.left > (BUFFER_BYTES / 2) as u64 {
            // A large payload goes straight into its message, up to the frame's end.
            let message = self.message.as_mut().expect("a data frame has its message");
            let want = usize::try_from(header.left).unwrap_or(usize::MAX).min(DIRECT_READ_BYTES);
            message.bytes.reserve(want);
            let spare = &mut message.bytes.spare_capacity_mut()[..want];
            let n = read(source, spare)?;
            let from = message.bytes.len();
            // SAFETY: the source initialised the first `n` bytes of the spare capacity.
            unsafe { message.bytes.set_len(from + n) };
            header.received(&mut message.bytes[from..]);
            message.check()?;
            return self.finish_if_done();
        }
        self.fill(source, 1).map(|()| None)
    }

    /// Checks a new frame's header against the protocol and the size limit.
    fn begin(&mut self, header: Header) -> Result<(), Stop> {
        let fail = |why| Err(Stop::Failed(Failure::Protocol(why)));
        let too_big = |size| Err(Stop::Failed(Failure::TooBig { size, max: self.max_message }));
        if header.left > self.max_message as u64 {
            return too_big(header.left);
        }
        if !header.masked {
            return fail("unmasked frame from the client");
        }
        if header.reserved {
            return fail("reserved bits set");
        }
        if header.opcode & 0x8 != 0 {
            if !header.fin {
                return fail("fragmented control frame");
            }
            if header.left > MAX_CONTROL_PAYLOAD as u64 {
                return fail("control frame too big");
            }
            if !matches!(header.opcode, 0x8..=0xA) {
                return fail("unknown control frame type");
            }
            self.control.clear();
        } else {
            match (header.opcode, &self.message) {
                (0x0, None) => return fail("continuation frame without a message to continue"),
                (0x1 | 0x2, Some(_)) => return fail("new data frame while a message is open"),
                (0x0..=0x2, _) => {}
                _ => return fail("unknown data frame type"),
            }
            let so_far = self.message.as_ref().map_or(0, |m| m.bytes.len() as u64);
            let size = so_far.saturating_add(header.left);
            if size > self.max_message as u64 {
                return too_big(size);
            }
            if header.opcode != 0x0 {
                let len = usize::try_from(header.left).expect("bounded by the message limit");
                // A payload that fits the buffer is copied from it; a larger one is read
                // into this allocation as it arrives (`step`).
                let bytes = Vec::with_capacity(len);
                self.message = Some(Message { text: header.opcode == 0x1, bytes, checked: 0 });
            }
        }
        self.header = Some(header);
        Ok(())
    }

    /// Ends the current frame once its payload is in, returning what it completes.
    fn finish_if_done(&mut self) -> Result<Option<Event>, Stop> {
        let header = self.header.as_ref().expect("a frame is being received");
        if header.left > 0 {
            return Ok(None);
        }
        let header = self.header.take().expect("checked above");
        let event = match header.opcode {
            0x8 => Event::Close(close_frame(std::mem::take(&mut self.control))?),
            0x9 => Event::Ping(std::mem::take(&mut self.control)),
            0xA => Event::Pong,
            _ if !header.fin => return Ok(None),
            _ => {
                let message = self.message.take().expect("a data frame has its message");
                if message.text {
                    if message.checked != message.bytes.len() {
                        // The message ends inside a character.
                        return Err(Stop::Failed(Failure::Utf8));
                    }
                    // SAFETY: `check` found every byte of the message to be UTF-8.
                    Event::Text(unsafe { String::from_utf8_unchecked(message.bytes) })
                } else {
                    Event::Binary(message.bytes)
                }
            }
        };
        Ok(Some(event))
    }

    /// Reads more into the buffer, first making room for at least `room` bytes.
    fn fill(&mut self, source: &mut impl Source, room: usize) -> Result<(), Stop> {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.buf.capacity() - self.buf.len() < room {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(BUFFER_BYTES);
        }
        let n = read(source, self.buf.spare_capacity_mut())?;
        let len = self.buf.len();
        // SAFETY: the source initialised the first `n` bytes of the spare capacity.
        unsafe { self.buf.set_len(len + n) };
        Ok(())
    }
}

/// Why `step` stopped short of an event.
enum Stop {
    Failed(Failure),
    /// A read ended the step: Ok at end of stream, or its error.
    Read(io::Result<()>),
}

fn read(source: &mut impl Source, spare: &mut [MaybeUninit<u8>]) -> Result<usize, Stop> {
    match source.read_into(spare) {
        Ok(0) => Err(Stop::Read(Ok(()))),
        Ok(n) => Ok(n),
        Err(e) => Err(Stop::Read(Err(e))),
    }
}

/// A header at the start of `bytes` and its length, or None while incomplete.
fn parse_header(bytes: &[u8]) -> Option<(Header, usize)> {
    let [first, second, ..] = *bytes else { return None };
    let (len, mut at) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let masked = second & 0x80 != 0;
    let mut mask = [0; 4];
    if masked {
        mask = bytes.get(at..at + 4)?.try_into().ok()?;
        at += 4;
    }
    let header = Header {
        fin: first & 0x80 != 0,
        reserved: first & 0x70 != 0,
        masked,
        opcode: first & 0x0F,
        mask,
        left: len,
        done: 0,
    };
    Some((header, at))
}

/// The Close frame a payload describes (§5.5.1).
fn close_frame(payload: Vec<u8>) -> Result<Option<CloseFrame>, Stop> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Stop::Failed(Failure::Protocol("close frame with a one-byte payload"))),
        _ => {
            let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
            let reason = String::from_utf8(payload[2..].to_vec())
                .map_err(|_| Stop::Failed(Failure::Utf8))?;
            Ok(Some(CloseFrame { code, reason: reason.into() }))
        }
    }
}

/// XORs `bytes` with the mask, starting at payload offset `done` (the mask's phase).
fn unmask(bytes: &mut [u8], mask: [u8; 4], done: u64) {
    let phase = (done % 4) as usize;
    let mut rotated = [0u8; 4];
    for (i, byte) in rotated.iter_mut().enumerate() {
        *byte = mask[(phase + i) % 4];
    }
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
        };
        // SAFETY: SSE2 is part of x86_64; every load and store is of 16 bytes inside `bytes`.
        unsafe {
            let word = _mm_set1_epi32(i32::from_ne_bytes(rotated));
            while at + 16 <= bytes.len() {
                let p = bytes.as_mut_ptr().add(at).cast::<__m128i>();
                _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), word));
                at += 16;
            }
        }
    }
    // Sixteen is a multiple of four, so the phase is unchanged here.
    for (i, byte) in bytes[at..].iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

/// How many bytes at the start of `bytes` are ASCII.
fn ascii_prefix(bytes: &[u8]) -> usize {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128};
        // SAFETY: SSE2 is part of x86_64; every load reads 16 bytes inside `bytes`.
        unsafe {
            let load = |at: usize| _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            while at + 64 <= bytes.len() {
                let any = _mm_or_si128(
                    _mm_or_si128(load(at), load(at + 16)),
                    _mm_or_si128(load(at + 32), load(at + 48)),
                );
                if _mm_movemask_epi8(any) != 0 {
                    break;
                }
                at += 64;
            }
        }
    }
    at + bytes[at..].iter().position(|b| !b.is_ascii()).unwrap_or(bytes.len() - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a script: each entry is what one read returns (None: WouldBlock), never more
    /// than the caller has room for.
    struct Script(std::collections::VecDeque<Option<Vec<u8>>>);

    impl Source for Script {
        fn read_into(&mut self, spare: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
            let Some(front) = self.0.front_mut() else { return Ok(0) };
            let Some(bytes) = front else {
                self.0.pop_front();
                return Err(io::ErrorKind::WouldBlock.into());
            };
            let n = bytes.len().min(spare.len());
            for (to, from) in spare.iter_mut().zip(bytes.drain(..n)) {
                to.write(from);
            }
            if bytes.is_empty() {
                self.0.pop_front();
            }
            Ok(n)
        }
    }

    fn script(reads: Vec<Option<Vec<u8>>>) -> Script {
        Script(reads.into())
    }

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn events(frames: &mut Frames, source: &mut Script) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            match frames.next(source) {
                Next::Event(event) => out.push(event),
                Next::WouldBlock => continue,
                Next::Eof => return out,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn failure(bytes: Vec<u8>, max: usize) -> Failure {
        let mut frames = Frames::new(&[], max);
        let mut source = script(vec![Some(bytes)]);
        loop {
            match frames.next(&mut source) {
                Next::Failed(failure) => return failure,
                Next::Event(_) => continue,
                other => panic!("expected a failure, got {other:?}"),
            }
        }
    }

    #[test]
    fn pipelined_frames_and_bytes_from_the_handshake_come_out_in_order() {
        let mut all = frame(0x81, b"one");
        all.extend(frame(0x82, b"two"));
        all.extend(frame(0x89, b"p"));
        all.extend(frame(0x8A, b""));
        let mut frames = Frames::new(&all[..5], 1 << 20);
        let mut source = script(vec![Some(all[5..].to_vec())]);
        assert_eq!(
            events(&mut frames, &mut source),
            vec![
                Event::Text("one".into()),
                Event::Binary(b"two".to_vec()),
                Event::Ping(b"p".to_vec()),
                Event::Pong
            ]
        );
    }

    #[test]
    fn a_frame_read_one_byte_at_a_time_with_would_block_between() {
        let bytes = frame(0x81, "héllo wörld, this is a text frame".as_bytes());
        let reads = bytes.iter().flat_map(|&b| [Some(vec![b]), None]).collect();
        let mut frames = Frames::new(&[], 1 << 20);
        assert_eq!(
            events(&mut frames, &mut script(reads)),
            vec![Event::Text("héllo wörld, this is a text frame".into())]
        );
    }

    #[test]
    fn fragments_join_with_control_frames_between_and_utf8_split_across_them() {
        let text = "añb".as_bytes(); // ñ is two bytes, split between fragments
        let mut all = frame(0x01, &text[..2]);
        all.extend(frame(0x89, b"ping"));
        all.extend(frame(0x00, &text[2..3]));
        all.extend(frame(0x80, &text[3..]));
        let mut frames = Frames::new(&[], 1 << 20);
        assert_eq!(
            events(&mut frames, &mut script(vec![Some(all)])),
            vec![Event::Ping(b"ping".to_vec()), Event::Text("añb".into())]
        );
    }

    #[test]
    fn large_payloads_are_read_into_their_message_and_unmasked_at_every_phase() {
        // 16-bit and 64-bit lengths, arriving in odd-sized reads so the mask's phase
        // changes between pieces.
        for len in [300, BUFFER_BYTES / 2 + 1, 70_000, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let bytes = frame(0x82, &payload);
            let reads = bytes.chunks(4099).map(|c| Some(c.to_vec())).collect();
            let mut frames = Frames::new(&[], 1 << 21);
            assert_eq!(events(&mut frames, &mut script(reads)), vec![Event::Binary(payload)]);
        }
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut all = frame(0x88, &payload);
        all.extend(frame(0x88, b""));
        let mut frames = Frames::new(&[], 1 << 20);
        let got = events(&mut frames, &mut script(vec![Some(all)]));
        assert_eq!(
            got,
            vec![
                Event::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })),
                Event::Close(None)
            ]
        );
        assert_eq!(
            failure(frame(0x88, b"x"), 100),
            Failure::Protocol("close frame with a one-byte payload")
        );
        assert_eq!(failure(frame(0x88, &[3, 232, 0xff]), 100), Failure::Utf8);
    }

    #[test]
    fn protocol_violations_fail() {
        let protocol = |bytes| match failure(bytes, 1 << 20) {
            Failure::Protocol(why) => why,
            other => panic!("expected a protocol failure, got {other:?}"),
        };
        let mut unmasked = frame(0x81, b"x");
        unmasked[1] &= 0x7F;
        unmasked.drain(2..6);
        assert_eq!(protocol(unmasked), "unmasked frame from the client");
        for first in [0xC1, 0xA1, 0x91] {
            assert_eq!(protocol(frame(first, b"x")), "reserved bits set");
        }
        assert_eq!(protocol(frame(0x83, b"x")), "unknown data frame type");
        assert_eq!(protocol(frame(0x8B, b"x")), "unknown control frame type");
        assert_eq!(protocol(frame(0x80, b"x")), "continuation frame without a message to continue");
        assert_eq!(protocol(frame(0x09, b"x")), "fragmented control frame");
        assert_eq!(protocol(frame(0x89, &[0; 126])), "control frame too big");
        let mut open = frame(0x01, b"a");
        open.extend(frame(0x81, b"b"));
        assert_eq!(protocol(open), "new data frame while a message is open");
    }

    #[test]
    fn sizes_are_checked_per_frame_and_per_message_and_text_must_be_utf8() {
        assert_eq!(failure(frame(0x81, &[b'a'; 11]), 10), Failure::TooBig { size: 11, max: 10 });
        let mut two = frame(0x01, &[b'a'; 6]);
        two.extend(frame(0x80, &[b'a'; 6]));
        assert_eq!(failure(two, 10), Failure::TooBig { size: 12, max: 10 });
        // A length with the top bit set is refused before any payload is awaited.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(failure(huge, 10), Failure::TooBig { size: u64::MAX, max: 10 });
        let mut frames = Frames::new(&[], 10);
        let exact = frame(0x81, &[b'a'; 10]);
        assert_eq!(
            events(&mut frames, &mut script(vec![Some(exact)])),
            vec![Event::Text("a".repeat(10))]
        );
        assert_eq!(failure(frame(0x81, &[0xc3, 0x28]), 10), Failure::Utf8);
    }

    #[test]
    fn utf8_is_checked_piece_by_piece_across_characters_cut_by_reads() {
        // Three-byte characters in a large payload read in pieces that cut them.
        let text = "€".repeat(30_000);
        let bytes = frame(0x81, text.as_bytes());
        let reads = bytes.chunks(1000).map(|c| Some(c.to_vec())).collect();
        let mut frames = Frames::new(&[], 1 << 20);
        assert_eq!(events(&mut frames, &mut script(reads)), vec![Event::Text(text)]);
        // A message that ends inside a character, and one broken far from its start.
        assert_eq!(failure(frame(0x81, &[b'a', 0xe2, 0x82]), 100), Failure::Utf8);
        let mut broken = "x".repeat(50_000).into_bytes();
        broken[40_000] = 0xff;
        assert_eq!(failure(frame(0x81, &broken), 1 << 20), Failure::Utf8);
    }

    #[test]
    fn the_ascii_prefix_ends_at_the_first_other_byte_wherever_it_is() {
        for len in [0, 1, 15, 16, 63, 64, 65, 200] {
            assert_eq!(ascii_prefix(&vec![b'a'; len]), len);
            for at in 0..len {
                let mut bytes = vec![b'a'; len];
                bytes[at] = 0x80;
                assert_eq!(ascii_prefix(&bytes), at);
            }
        }
    }

    #[test]
    fn unmasking_matches_the_definition_at_every_phase_and_length() {
        let mask = [1, 2, 4, 8];
        for done in 0..4u64 {
            for len in 0..70 {
                let mut bytes: Vec<u8> = (0..len as u8).collect();
                unmask(&mut bytes, mask, done);
                for (i, b) in bytes.iter().enumerate() {
                    assert_eq!(*b, i as u8 ^ mask[(i + done as usize) % 4]);
                }
            }
        }
    }
}
