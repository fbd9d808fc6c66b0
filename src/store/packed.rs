//! The lz4 block both stores keep bodies in, its unpacked size first (four
//! bytes, little-endian), as `lz4_flex::compress_prepend_size` writes it.

/// Room above the largest body for what a record packs beside it (its
/// metadata, on sled).
const MAX_BESIDE_BODY: usize = 1 << 20;

pub fn pack(bytes: &[u8]) -> Vec<u8> {
    lz4_flex::compress_prepend_size(bytes)
}

/// The bytes a block packs; `None` when it is cut or corrupt, or states a
/// size no record has (a flipped bit there would otherwise allocate up to
/// 4 GiB before the block is found wrong).
pub fn unpack(packed: &[u8]) -> Option<Vec<u8>> {
    let (size, block) = lz4_flex::block::uncompressed_size(packed).ok()?;
    if size > crate::config::MAX_BODY_BYTES_LIMIT + MAX_BESIDE_BODY {
        return None;
    }
    let bytes = lz4_flex::block::decompress(block, size).ok()?;
    (bytes.len() == size).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_packed_unpacks_and_what_is_damaged_does_not() {
        let body =
            br#"{"id":"evt_1","data":{"status":"IN_TRANSIT","pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
        let packed = pack(body);
        assert_eq!(unpack(&packed).as_deref(), Some(&body[..]));
        assert_eq!(unpack(&packed[..packed.len() - 1]), None, "cut");
        assert_eq!(unpack(&packed[..3]), None, "no size");
        let mut larger = packed.clone();
        larger[..4].copy_from_slice(&(body.len() as u32 + 1).to_le_bytes());
        assert_eq!(unpack(&larger), None, "a size other than the block's");
        let mut huge = packed;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(unpack(&huge), None, "a size no record has");
    }
}
