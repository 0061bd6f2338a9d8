//! Fast standard base64 for the bulk paths: encoding for process output and `fs/readFile`,
//! decoding for `fs/writeFile`. Small payloads and every error message use the base64
//! crate.

use base64::Engine as _;

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
/// streaming and of `fs/readFile`. With AVX2, 24 bytes at a time are encoded in registers;
/// the rest takes two lookups in a table of character pairs per three bytes. Both are held
/// to the crate's output by the tests below. The characters go straight into `out`'s spare
/// capacity: filling it first (`Vec::resize`, or one `memset`) was a second pass over a
/// spool page's 5.7 MiB of text.
pub fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    let len = bytes.len().div_ceil(3) * 4;
    out.reserve(len);
    let start = out.len();
    // SAFETY: `reserve` made room for `len` bytes after `start`; `encode_raw` writes exactly
    // those, so they are initialized when counted.
    unsafe {
        encode_raw(bytes, out.as_mut_ptr().add(start));
        out.set_len(start + len);
    }
}

/// Writes the padded base64 of `bytes`, `bytes.len().div_ceil(3) * 4` characters, at `dst`.
///
/// # Safety
/// `dst` must be valid for writes of that many bytes.
unsafe fn encode_raw(bytes: &[u8], mut dst: *mut u8) {
    let mut bytes = bytes;
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 28 && std::arch::is_x86_feature_detected!("avx2") {
        // Each block reads 28 bytes and encodes 24 of them.
        let blocks = (bytes.len() - 4) / 24;
        // SAFETY: AVX2 is present; the blocks' 32 characters each are the start of the
        // encoding, which the caller made room for.
        unsafe { avx2::encode_blocks(&bytes[..blocks * 24 + 4], dst) };
        bytes = &bytes[blocks * 24..];
        // SAFETY: still inside the encoding's room.
        dst = unsafe { dst.add(blocks * 32) };
    }
    let groups = bytes.chunks_exact(3);
    let tail = groups.remainder();
    for group in groups {
        let n =
            (usize::from(group[0]) << 16) | (usize::from(group[1]) << 8) | usize::from(group[2]);
        let [a, b] = BASE64_PAIRS[n >> 12];
        let [c, d] = BASE64_PAIRS[n & 0xfff];
        // SAFETY: four characters per group, inside the encoding's room.
        unsafe {
            dst.cast::<[u8; 4]>().write_unaligned([a, b, c, d]);
            dst = dst.add(4);
        }
    }
    if !tail.is_empty() {
        // One or two bytes left: their characters, then '=' padding.
        let b1 = tail.get(1).copied().unwrap_or(0);
        let n = (usize::from(tail[0]) << 16) | (usize::from(b1) << 8);
        let third = if tail.len() == 2 { BASE64_ALPHABET[(n >> 6) & 63] } else { b'=' };
        let slot = [BASE64_ALPHABET[n >> 18], BASE64_ALPHABET[(n >> 12) & 63], third, b'='];
        // SAFETY: the last four characters of the encoding's room.
        unsafe { dst.cast::<[u8; 4]>().write_unaligned(slot) };
    }
}

/// Appends the padded standard base64 of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    // SAFETY: `encode` appends only ASCII characters, so `out` stays valid UTF-8.
    encode(bytes, unsafe { out.as_mut_vec() });
}

/// Appends the bytes of the padded standard base64 `text` to `out`, accepting and
/// rejecting exactly what the base64 crate's `STANDARD` engine does, with its errors.
///
/// On x86-64 with AVX2, all but the last 4 to 35 characters are decoded 32 at a time
/// with the lookup scheme of Muła and Lemire (arXiv:1704.00605), about ten times the
/// crate's speed; that bulk holds no padding, so it is valid exactly when every character
/// is in the alphabet. The rest, padding included, goes through the crate, and any error
/// is produced by running the crate over the whole text, so its offsets are the usual ones.
pub fn decode(text: &[u8], out: &mut Vec<u8>) -> Result<(), base64::DecodeError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let start = out.len();
    // What is left for the crate; None once the bulk has shown the text invalid.
    let mut rest = Some(text);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let blocks = text.len().saturating_sub(4) / 32;
        // Each block stores 32 bytes and keeps 24.
        out.reserve(blocks * 24 + 8 + base64::decoded_len_estimate(text.len() - blocks * 32));
        // SAFETY: AVX2 is present; the stores stay inside the capacity just reserved.
        let valid = unsafe { avx2::decode_blocks(&text[..blocks * 32], out) };
        rest = valid.then(|| &text[blocks * 32..]);
    }
    if let Some(rest) = rest {
        if engine.decode_vec(rest, out).is_ok() {
            return Ok(());
        }
    }
    out.truncate(start);
    engine.decode_vec(text, out).map(|_| ())
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Encodes `bytes` but its last 4 (a multiple of 24 plus 4: every block loads 28
    /// bytes) at `out`, 32 characters per 24 bytes, with the scheme of Muła and Lemire
    /// (arXiv:1704.00605). `out` must be valid for writes of that many characters.
    #[target_feature(enable = "avx2")]
    pub unsafe fn encode_blocks(bytes: &[u8], out: *mut u8) {
        // Per 128-bit lane, 12 bytes as four (b1, b0, b2, b1) words.
        let spread = _mm256_setr_epi8(
            1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10, 1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7,
            10, 9, 11, 10,
        );
        // Per value range (0-25, 26-51, 52-61, 62, 63), the offset to its character.
        let offsets = _mm256_setr_epi8(
            65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0, 65, 71, -4, -4, -4, -4,
            -4, -4, -4, -4, -4, -4, -19, -16, 0, 0,
        );
        let blocks = (bytes.len() - 4) / 24;
        for i in 0..blocks {
            // SAFETY: bytes i*24 .. i*24 + 28 exist (the length is blocks * 24 + 4), and
            // out has room for 32 characters at i*32 (the caller's guarantee).
            unsafe {
                let at = bytes.as_ptr().add(i * 24);
                let lo = _mm_loadu_si128(at.cast());
                let hi = _mm_loadu_si128(at.add(12).cast());
                let words = _mm256_shuffle_epi8(_mm256_set_m128i(hi, lo), spread);
                // Four 6-bit values per word, each moved to its own byte.
                let ac = _mm256_mulhi_epu16(
                    _mm256_and_si256(words, _mm256_set1_epi32(0x0fc0_fc00)),
                    _mm256_set1_epi32(0x0400_0040),
                );
                let bd = _mm256_mullo_epi16(
                    _mm256_and_si256(words, _mm256_set1_epi32(0x003f_03f0)),
                    _mm256_set1_epi32(0x0100_0010),
                );
                let values = _mm256_or_si256(ac, bd);
                let range = _mm256_sub_epi8(
                    _mm256_subs_epu8(values, _mm256_set1_epi8(51)),
                    _mm256_cmpgt_epi8(values, _mm256_set1_epi8(25)),
                );
                let chars = _mm256_add_epi8(values, _mm256_shuffle_epi8(offsets, range));
                _mm256_storeu_si256(out.add(i * 32).cast(), chars);
            }
        }
    }

    /// Decodes `text` (a multiple of 32 characters, no padding) onto the end of `out`,
    /// which must have room for `text.len() / 32 * 24 + 8` more bytes. False, with `out`
    /// partly written, if a character is outside the alphabet.
    #[target_feature(enable = "avx2")]
    pub unsafe fn decode_blocks(text: &[u8], out: &mut Vec<u8>) -> bool {
        // A bit per class of high nibble, and per low nibble the classes it is invalid in
        // (bit 4: never valid); a character is valid when the two share no bit.
        let lut_hi = _mm256_setr_epi8(
            0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
            0x10, 0x10, 0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10,
            0x10, 0x10, 0x10, 0x10,
        );
        let lut_lo = _mm256_setr_epi8(
            0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B,
            0x1B, 0x1A, 0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A,
            0x1B, 0x1B, 0x1B, 0x1A,
        );
        // What to add to a character, by high nibble ('/' one slot lower), for its value.
        let lut_roll = _mm256_setr_epi8(
            0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 19, 4, -65, -65, -71,
            -71, 0, 0, 0, 0, 0, 0, 0, 0,
        );
        let mask_2f = _mm256_set1_epi8(0x2f);
        let merge_pairs = _mm256_set1_epi32(0x0140_0140);
        let merge_quads = _mm256_set1_epi32(0x0001_1000);
        let pack = _mm256_setr_epi8(
            2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1, 2, 1, 0, 6, 5, 4, 10, 9, 8, 14,
            13, 12, -1, -1, -1, -1,
        );
        let lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, -1, -1);
        let mut len = out.len();
        for block in text.chunks_exact(32) {
            // SAFETY (all loads and stores): 32 readable bytes in `block`; the caller's
            // reservation leaves 32 writable bytes at `len` for every block.
            let chars = unsafe { _mm256_loadu_si256(block.as_ptr().cast()) };
            let hi_nibbles = _mm256_and_si256(_mm256_srli_epi32(chars, 4), mask_2f);
            let lo_nibbles = _mm256_and_si256(chars, mask_2f);
            let hi = _mm256_shuffle_epi8(lut_hi, hi_nibbles);
            let lo = _mm256_shuffle_epi8(lut_lo, lo_nibbles);
            if _mm256_testz_si256(lo, hi) == 0 {
                return false;
            }
            let eq_2f = _mm256_cmpeq_epi8(chars, mask_2f);
            let roll = _mm256_shuffle_epi8(lut_roll, _mm256_add_epi8(eq_2f, hi_nibbles));
            let values = _mm256_add_epi8(chars, roll);
            let pairs = _mm256_maddubs_epi16(values, merge_pairs);
            let quads = _mm256_madd_epi16(pairs, merge_quads);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(quads, pack), lanes);
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(len).cast(), bytes) };
            len += 24;
        }
        // SAFETY: every byte up to `len` was written above.
        unsafe { out.set_len(len) };
        true
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    const CRATE: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn both(text: &[u8]) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
        let mut ours = b"prefix".to_vec();
        let ours =
            super::decode(text, &mut ours).map(|()| ours[6..].to_vec()).map_err(|e| e.to_string());
        (ours, CRATE.decode(text).map_err(|e| e.to_string()))
    }

    #[test]
    fn encode_matches_the_crate() {
        let patterns: [Vec<u8>; 2] = [
            (0..1000u32).map(|i| (i * 131 + i / 3) as u8).collect(),
            (0..1000u32).map(|i| (255 - i % 256) as u8).collect(),
        ];
        for bytes in &patterns {
            for len in (0..130).chain([255, 256, 257, 767, 768, 769, 1000]) {
                let mut out = b"prefix".to_vec();
                super::encode(&bytes[..len], &mut out);
                assert_eq!(out[6..], *CRATE.encode(&bytes[..len]).as_bytes(), "length {len}");
            }
        }
    }

    #[test]
    fn decode_matches_the_crate_on_valid_text() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 131 + i / 3) as u8).collect();
        for len in (0..120).chain([255, 256, 257, 767, 768, 769, 1000]) {
            let text = CRATE.encode(&bytes[..len]);
            let (ours, theirs) = both(text.as_bytes());
            assert_eq!(ours, theirs, "length {len}");
            assert_eq!(ours.unwrap(), bytes[..len], "length {len}");
        }
    }

    #[test]
    fn decode_rejects_what_the_crate_rejects_with_its_error() {
        let bytes: Vec<u8> = (0..150u32).map(|i| (i * 7 + 3) as u8).collect();
        let text = CRATE.encode(&bytes).into_bytes();
        // Every byte value at positions in the first block, a later block and the tail.
        for at in [0, 5, 31, 32, 77, 150, text.len() - 3, text.len() - 1] {
            for byte in 0..=255u8 {
                let mut bad = text.clone();
                bad[at] = byte;
                let (ours, theirs) = both(&bad);
                assert_eq!(ours, theirs, "byte {byte} at {at}");
            }
        }
        // Padding in the middle, non-zero trailing bits, a missing character.
        for bad in [
            &b"QUJD=EVG"[..],
            b"QR==",
            b"QUI=",
            b"QUJ",
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=QUJD",
        ] {
            let (ours, theirs) = both(bad);
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(bad));
        }
    }
}
