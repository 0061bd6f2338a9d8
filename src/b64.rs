//! Fast standard base64 encoding for the two bulk paths, process output and
//! `fs/readFile`. Decoding and small payloads use the base64 crate.

/// The standard base64 alphabet.
const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The two base64 characters of every 12-bit value.
static BASE64_PAIRS: [[u8; 2]; 4096] = {
    let mut pairs = [[0u8; 2]; 4096];
    let mut i = 0;
    while i < 4096 {
        pairs[i] = [BASE64_ALPHABET[i >> 6], BASE64_ALPHABET[i & 63]];
        i += 1;
    }
    pairs
};

/// Appends the padded standard base64 of `bytes` to `out`. The base64 crate's generic
/// encoder is built at this crate's size-optimized level and was the hottest code of
/// streaming and of `fs/readFile`; two lookups in a table of character pairs per three bytes is several times
/// faster. `process::tests::base64_matches_the_crate` holds it to the crate's output.
pub fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, b'=');
    let groups = bytes.chunks_exact(3);
    let tail = groups.remainder();
    let mut slots = out[start..].chunks_exact_mut(4);
    for (group, slot) in groups.zip(&mut slots) {
        let n =
            (usize::from(group[0]) << 16) | (usize::from(group[1]) << 8) | usize::from(group[2]);
        let [a, b] = BASE64_PAIRS[n >> 12];
        let [c, d] = BASE64_PAIRS[n & 0xfff];
        slot.copy_from_slice(&[a, b, c, d]);
    }
    if let Some(slot) = slots.next() {
        // One or two bytes left: their characters, then the '=' padding already in place.
        let b1 = tail.get(1).copied().unwrap_or(0);
        let n = (usize::from(tail[0]) << 16) | (usize::from(b1) << 8);
        slot[0] = BASE64_ALPHABET[n >> 18];
        slot[1] = BASE64_ALPHABET[(n >> 12) & 63];
        if tail.len() == 2 {
            slot[2] = BASE64_ALPHABET[(n >> 6) & 63];
        }
    }
}

/// Appends the padded standard base64 of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    // SAFETY: `encode` appends only ASCII characters, so `out` stays valid UTF-8.
    encode(bytes, unsafe { out.as_mut_vec() });
}
