//! Compression of the bytes kept in segments: LZ4 blocks (lz4_flex, pure
//! Rust) with the original length in front. Event and log text compresses
//! three to eight times, so the agent's buffer holds that much more for a
//! control plane that is away, the control plane's retention that much
//! more per disk, and both write that much less while busy (the event
//! pipeline was bound by the disk). Owners mark which of their pieces are
//! packed; this module only packs and unpacks.

/// The most a packed piece may unpack to: a length beyond it is damage,
/// and is refused before anything is allocated.
pub const MAX_UNPACKED: usize = 256 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot unpack: {0}")]
pub struct UnpackError(String);

/// Packs `bytes` (original length, then the LZ4 block).
pub fn pack(bytes: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(bytes)
}

/// Appends `bytes`, packed, to `out`.
pub fn pack_into(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&pack(bytes));
}

/// Unpacks what [`pack`] made.
pub fn unpack(packed: &[u8]) -> Result<Vec<u8>, UnpackError> {
    let (len, block) =
        lz4_flex::block::uncompressed_size(packed).map_err(|e| UnpackError(e.to_string()))?;
    // LZ4 expands at most about 255 times; anything more is damage.
    if len > MAX_UNPACKED || len > block.len().saturating_mul(255).saturating_add(16) {
        return Err(UnpackError(format!(
            "a piece of {} bytes claims to unpack to {len}",
            block.len()
        )));
    }
    lz4_flex::block::decompress(block, len).map_err(|e| UnpackError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_an_error() {
        let text = r#"{"event_type":"alert","src_ip":"203.0.113.77"}"#.repeat(200);
        let packed = pack(text.as_bytes());
        assert!(
            packed.len() * 4 < text.len(),
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert_eq!(unpack(&packed).unwrap(), text.as_bytes());
        assert_eq!(unpack(&pack(b"")).unwrap(), b"");
        let mut claims_huge = packed.clone();
        claims_huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&claims_huge).is_err());
        for cut in [0, 3, 5, packed.len() / 2] {
            assert!(unpack(&packed[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = packed;
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        // Either an error or other bytes: never a panic (the segment's
        // CRC is what catches damage).
        let _ = unpack(&flipped);
    }
}
