//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.

use std::io::Read;
use std::path::Path;

use super::DataError;

/// An IDX array of unsigned bytes: its dimensions and values.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<u8>,
}

/// The most bytes a compressed IDX file may expand to (16 GiB): more is a damaged or hostile file.
const MAX_DECOMPRESSED_BYTES: u64 = 16 << 30;

/// Reads an IDX file of unsigned bytes (type code 0x08), gzip-compressed or not.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_idx(&raw, path)
}

/// Decodes IDX bytes, gzip-compressed or not; `origin` names them in errors.
pub fn decode_idx(raw: &[u8], origin: &Path) -> Result<IdxArray, DataError> {
    let path = origin;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .take(MAX_DECOMPRESSED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::malformed(path, format!("corrupt gzip stream: {e}")))?;
        if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
            return Err(DataError::malformed(
                path,
                format!("decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"),
            ));
        }
        out
    } else {
        raw.to_vec()
    };
    parse_idx(&bytes).map_err(|problem| DataError::malformed(path, problem))
}

/// Parses IDX bytes: two zero bytes, the type code, the rank, the big-endian dimensions, the data.
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an IDX file (wrong magic number)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX element type 0x{:02x} is not supported (unsigned bytes, 0x08, are)",
            bytes[2]
        ));
    }
    let rank = usize::from(bytes[3]);
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(format!(
            "truncated IDX header ({} bytes for rank {rank})",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("IDX dimensions overflow")?;
    let data = &bytes[header..];
    if data.len() != expected {
        return Err(format!(
            "IDX header {dims:?} promises {expected} values, the file holds {}",
            data.len()
        ));
    }
    Ok(IdxArray {
        dims,
        values: data.to_vec(),
    })
}

/// Encodes bytes as an uncompressed IDX file (used to write test data and subsets).
pub fn encode_idx(dims: &[usize], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_inputs() {
        let bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let array = parse_idx(&bytes).unwrap();
        assert_eq!(array.dims, vec![2, 3]);
        assert_eq!(array.values, vec![1, 2, 3, 4, 5, 6]);

        assert!(
            parse_idx(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .contains("promises 6 values")
        );
        assert!(parse_idx(&[1, 0, 8, 1]).unwrap_err().contains("magic"));
        assert!(
            parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0])
                .unwrap_err()
                .contains("0x0d")
        );
        assert!(
            parse_idx(&[0, 0, 8, 3, 0])
                .unwrap_err()
                .contains("truncated")
        );
    }
}
