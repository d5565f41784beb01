//! The IDX format of the MNIST files (gzipped or raw): a big-endian header of magic number and
//! dimensions, then unsigned bytes. Every size the header claims is checked against the bytes
//! actually present before anything that large is kept, so a corrupt header fails at once.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::DataError;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The images of one IDX file: `count` images of `rows × cols` bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads an `idx3-ubyte` image file.
pub fn read_images(path: &Path) -> Result<Images, DataError> {
    let (mut reader, max_content) = open(path)?;
    let header = read_header(&mut reader, path, IMAGES_MAGIC, "images", 3)?;
    let [count, rows, cols] = [header[0], header[1], header[2]];
    // Saturating: 2^32 cubed does not fit in 64 bits, and no file holds that much anyway.
    let len = u64::from(count)
        .saturating_mul(u64::from(rows))
        .saturating_mul(u64::from(cols));
    let pixels = read_body(&mut reader, path, len, max_content, "images")?;
    Ok(Images {
        count: count as usize,
        rows: rows as usize,
        cols: cols as usize,
        pixels,
    })
}

/// Reads an `idx1-ubyte` label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let (mut reader, max_content) = open(path)?;
    let header = read_header(&mut reader, path, LABELS_MAGIC, "labels", 1)?;
    read_body(
        &mut reader,
        path,
        u64::from(header[0]),
        max_content,
        "labels",
    )
}

/// Deflate expands at most about 1032:1, so a gzipped file of `n` bytes holds at most
/// `n * 1032` bytes of content; a header that claims more is corrupt before a byte is read.
const MAX_GZIP_RATIO: u64 = 1032;

/// The file's content as a reader, and the most content bytes its size can justify.
fn open(path: &Path) -> Result<(Box<dyn Read>, u64), DataError> {
    let io = |source| DataError::Io {
        path: path.into(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let size = file.get_ref().metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let gzipped = matches!(read_up_to(&mut file, &mut magic), Ok(2) if magic == GZIP_MAGIC);
    // Re-open rather than seek: the two peeked bytes go back in front either way.
    let file = BufReader::new(File::open(path).map_err(io)?);
    Ok(if gzipped {
        (
            Box::new(BufReader::new(GzDecoder::new(file))),
            size.saturating_mul(MAX_GZIP_RATIO),
        )
    } else {
        (Box::new(file), size)
    })
}

fn read_header(
    reader: &mut dyn Read,
    path: &Path,
    expected_magic: u32,
    kind: &'static str,
    dims: usize,
) -> Result<Vec<u32>, DataError> {
    let mut bytes = vec![0u8; 4 * (dims + 1)];
    let found = read_up_to(reader, &mut bytes).map_err(|source| io_error(path, source))?;
    if found < 4 {
        return Err(truncated(path, "header", 4 * (dims + 1), found));
    }
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    if words[0] != expected_magic {
        return Err(DataError::BadMagic {
            path: path.into(),
            kind,
            found: words[0],
            expected: expected_magic,
        });
    }
    if found < bytes.len() {
        return Err(truncated(path, "header", bytes.len(), found));
    }
    Ok(words[1..].to_vec())
}

/// Reads exactly `len` bytes and checks that nothing follows. A length the file cannot hold
/// fails at once; otherwise the buffer grows with the bytes that really arrive.
fn read_body(
    reader: &mut dyn Read,
    path: &Path,
    len: u64,
    max_content: u64,
    what: &'static str,
) -> Result<Vec<u8>, DataError> {
    if len > max_content {
        return Err(DataError::Truncated {
            path: path.into(),
            what,
            expected: len,
            found: max_content,
        });
    }
    let mut body = Vec::new();
    reader
        .take(len)
        .read_to_end(&mut body)
        .map_err(|source| io_error(path, source))?;
    if (body.len() as u64) < len {
        return Err(DataError::Truncated {
            path: path.into(),
            what,
            expected: len,
            found: body.len() as u64,
        });
    }
    let mut rest = Vec::new();
    let extra = reader
        .take(1 << 20)
        .read_to_end(&mut rest)
        .map_err(|source| io_error(path, source))?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            path: path.into(),
            extra: extra as u64,
        });
    }
    Ok(body)
}

/// SHA-256 of a file's IDX content (decompressed if gzipped), read under the same bound as
/// [`read_images`]: content beyond what the file's size can hold is an error, not a stall.
pub fn content_sha256(path: &Path) -> Result<String, DataError> {
    let (reader, max_content) = open(path)?;
    bounded_sha256(reader, max_content).map_err(|source| io_error(path, source))
}

/// [`content_sha256`] of a file's bytes still in memory (a download before it is stored), with
/// the content also bounded by `most`: what no file of the expected kind exceeds.
pub fn bytes_content_sha256(bytes: &[u8], most: u64) -> std::io::Result<String> {
    let size = bytes.len() as u64;
    if bytes.starts_with(&GZIP_MAGIC) {
        let bound = size.saturating_mul(MAX_GZIP_RATIO).min(most);
        bounded_sha256(GzDecoder::new(bytes), bound)
    } else {
        bounded_sha256(bytes, size.min(most))
    }
}

fn bounded_sha256(reader: impl Read, max_content: u64) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let read = std::io::copy(&mut reader.take(max_content.saturating_add(1)), &mut hasher)?;
    if read > max_content {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("its content runs past {max_content} bytes, more than it can hold"),
        ));
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Like `read_exact`, but reports how many bytes there were instead of failing.
fn read_up_to(reader: &mut dyn Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: PathBuf::from(path),
        source,
    }
}

fn truncated(path: &Path, what: &'static str, expected: usize, found: usize) -> DataError {
    DataError::Truncated {
        path: path.into(),
        what,
        expected: expected as u64,
        found: found as u64,
    }
}

/// Encodes images or labels as IDX bytes: the inverse of the reader, for tests and tools.
pub fn encode(magic_dims: &[u32], body: &[u8]) -> Vec<u8> {
    let magic = if magic_dims.len() == 3 {
        IMAGES_MAGIC
    } else {
        LABELS_MAGIC
    };
    let mut bytes: Vec<u8> = std::iter::once(magic)
        .chain(magic_dims.iter().copied())
        .flat_map(u32::to_be_bytes)
        .collect();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn two_images() -> Vec<u8> {
        encode(&[2, 2, 3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    }

    #[test]
    fn reads_raw_and_gzipped_images_alike() {
        let dir = tempfile::tempdir().unwrap();
        let raw = read_images(&write(dir.path(), "raw", &two_images())).unwrap();
        let gz = read_images(&write(dir.path(), "gz", &gzip(&two_images()))).unwrap();
        assert_eq!(raw, gz);
        assert_eq!((raw.count, raw.rows, raw.cols), (2, 2, 3));
        assert_eq!(raw.pixels[11], 11);
    }

    #[test]
    fn reads_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "labels", &gzip(&encode(&[3], &[7, 0, 9])));
        assert_eq!(read_labels(&path).unwrap(), vec![7, 0, 9]);
    }

    #[test]
    fn a_label_file_is_not_an_image_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "labels", &encode(&[3], &[7, 0, 9]));
        let error = read_images(&path).unwrap_err();
        assert!(
            matches!(error, DataError::BadMagic { found: 0x801, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("labels"),
            "the message names the file: {error}"
        );
    }

    #[test]
    fn a_short_header_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "short", &two_images()[..10]);
        assert!(matches!(
            read_images(&path),
            Err(DataError::Truncated { what: "header", .. })
        ));
        let empty = write(dir.path(), "empty", &[]);
        assert!(matches!(
            read_labels(&empty),
            Err(DataError::Truncated { what: "header", .. })
        ));
    }

    #[test]
    fn a_short_body_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = two_images();
        let path = write(dir.path(), "short", &gzip(&bytes[..bytes.len() - 1]));
        let error = read_images(&path).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::Truncated {
                    expected: 12,
                    found: 11,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_huge_claimed_count_fails_before_reading_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode(&[u32::MAX, 28, 28], &[0; 784]);
        let path = write(dir.path(), "huge", &bytes);
        let error = read_images(&path).unwrap_err();
        // `found` is the most the file can hold, not what was read.
        let size = bytes.len() as u64;
        assert!(
            matches!(error, DataError::Truncated { found, .. } if found == size),
            "{error}"
        );

        let gz = gzip(&bytes);
        let path = write(dir.path(), "huge.gz", &gz);
        let error = read_images(&path).unwrap_err();
        let most = gz.len() as u64 * MAX_GZIP_RATIO;
        assert!(
            matches!(error, DataError::Truncated { found, .. } if found == most),
            "{error}"
        );
    }

    #[test]
    fn bytes_after_the_last_item_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "long", &encode(&[2], &[1, 2, 3]));
        assert!(matches!(
            read_labels(&path),
            Err(DataError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn a_corrupt_gzip_stream_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = gzip(&two_images());
        let middle = bytes.len() / 2;
        bytes[middle..].iter_mut().for_each(|b| *b ^= 0xa5);
        let path = write(dir.path(), "corrupt.gz", &bytes);
        let error = read_images(&path).unwrap_err();
        assert!(error.to_string().contains("corrupt.gz"), "{error}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let error = read_labels(Path::new("/nonexistent/labels-idx1-ubyte")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/labels-idx1-ubyte"),
            "{error}"
        );
    }
}
