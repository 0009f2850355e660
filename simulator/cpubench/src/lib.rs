//! The kernel of edgesim's built-in CPU benchmark (`edgesim::profile::calibrate`): LZMA
//! compression and decompression with `lzma-rust2`, the work 7-Zip's benchmark times.
//!
//! It is a crate of its own because the LZMA coder is generic over its reader and writer:
//! its code is compiled in the crate that picks them. Here that is this crate, which the
//! workspace builds optimised in dev builds too, so the benchmark scores the same on debug
//! and release builds of edgesim. Timing and the conversion to 7-Zip MIPS live in edgesim.

use std::io::{Read as _, Write as _};

/// The LZMA settings: optimal parsing (7-Zip's "normal" mode) with a binary-tree match
/// finder, literal context 3, position bits 2, nice length 32, as 7-Zip's level 5 and its
/// benchmark use; a dictionary of `dict_size` bytes.
fn options(dict_size: u32) -> lzma_rust2::LzmaOptions {
    let mut o = lzma_rust2::LzmaOptions::with_preset(5);
    o.dict_size = dict_size;
    o.mode = lzma_rust2::EncodeMode::Normal;
    o.mf = lzma_rust2::MfType::Bt4;
    o.nice_len = 32;
    o
}

/// Compresses `input` to a raw LZMA stream (no header, with an end marker).
///
/// # Errors
/// What the coder reports (nothing, for a valid dictionary size).
pub fn compress(input: &[u8], dict_size: u32) -> std::io::Result<Vec<u8>> {
    let mut w = lzma_rust2::LzmaWriter::new_no_header(
        Vec::with_capacity(input.len() / 2 + 64),
        &options(dict_size),
        true,
    )?;
    w.write_all(input)?;
    w.finish()
}

/// Decompresses a stream of [`compress`] into `out`, which must be exactly as long as the
/// original input.
///
/// # Errors
/// When the stream is corrupt or holds a different length than `out`.
pub fn decompress_into(packed: &[u8], dict_size: u32, out: &mut [u8]) -> std::io::Result<()> {
    let o = options(dict_size);
    let mut r = lzma_rust2::LzmaReader::new(packed, u64::MAX, o.lc, o.lp, o.pb, o.dict_size, None)?;
    r.read_exact(out)?;
    let mut rest = [0u8; 1];
    match r.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the stream holds more data than expected",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_damage() {
        let input: Vec<u8> = (0..50_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 977) as u8)
            .collect();
        let packed = super::compress(&input, 1 << 20).unwrap();
        assert!(packed.len() < input.len() / 4);
        let mut out = vec![0; input.len()];
        super::decompress_into(&packed, 1 << 20, &mut out).unwrap();
        assert_eq!(out, input);
        let mut short = vec![0; input.len() - 1];
        assert!(super::decompress_into(&packed, 1 << 20, &mut short).is_err());
        assert!(super::decompress_into(&packed[..packed.len() / 2], 1 << 20, &mut out).is_err());
    }
}
