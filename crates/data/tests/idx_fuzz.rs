//! The IDX reader against hostile input: arbitrary bytes, mutations of valid files (raw and
//! gzipped), and a corpus of the interesting cases found so far. It must never panic, and never
//! make an allocation that the file's size does not justify.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use vit_data::DataError;
use vit_data::idx::{encode, read_images, read_labels};

/// Records the largest single allocation made by the current thread.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.with(|largest| largest.set(largest.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.with(|largest| largest.set(largest.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Buffers of the reader itself (file and gzip buffers, the decoder's window).
const FIXED_OVERHEAD: usize = 256 * 1024;

/// Reads `bytes` as both kinds of IDX file and checks the allocation bound. Panics inside the
/// reader fail the property.
fn read_both(bytes: &[u8]) -> (Result<(), DataError>, Result<(), DataError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    std::fs::write(&path, bytes).unwrap();
    let content_bound = if bytes.starts_with(&[0x1f, 0x8b]) {
        bytes.len() * 1032
    } else {
        bytes.len()
    };
    let images = measured(&path, content_bound, |p| {
        read_images(p).map(|images| {
            assert_eq!(
                images.pixels.len(),
                images.count * images.rows * images.cols
            );
        })
    });
    let labels = measured(&path, content_bound, |p| read_labels(p).map(|_| ()));
    (images, labels)
}

/// Only that reading does not panic and stays within its allocation bound.
fn survives(bytes: &[u8]) {
    let _ = read_both(bytes);
}

fn measured(
    path: &Path,
    content_bound: usize,
    read: impl Fn(&Path) -> Result<(), DataError>,
) -> Result<(), DataError> {
    LARGEST.with(|largest| largest.set(0));
    let result = read(path);
    let largest = LARGEST.with(Cell::get);
    // A growing Vec may double past the content it holds.
    assert!(
        largest <= 2 * content_bound + FIXED_OVERHEAD,
        "allocated {largest} bytes for a {content_bound}-byte bound"
    );
    result
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn valid_images() -> Vec<u8> {
    encode(
        &[3, 28, 28],
        &(0..3 * 784).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
}

/// A change to a valid file: flip bytes, cut it, or append to it.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Truncate(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at, mask } if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= mask;
            }
            Mutation::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Append(extra) => bytes.extend_from_slice(extra),
            Mutation::Flip { .. } => {}
        }
    }
    bytes
}

proptest! {
    // Failing cases are kept beside this file and replayed first on every run.
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/idx_fuzz.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        survives(&bytes);
    }

    #[test]
    fn arbitrary_headers_never_panic(dims in proptest::collection::vec(any::<u32>(), 0..4), magic in prop_oneof![Just(0x801u32), Just(0x803u32), any::<u32>()], body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = magic.to_be_bytes().to_vec();
        bytes.extend(dims.iter().flat_map(|d| d.to_be_bytes()));
        bytes.extend(body);
        survives(&bytes);
        survives(&gzip(&bytes));
    }

    #[test]
    fn mutated_valid_files_never_panic(mutations in proptest::collection::vec(mutation(), 1..4)) {
        survives(&mutate(valid_images(), &mutations));
        survives(&gzip(&mutate(valid_images(), &mutations)));
        survives(&mutate(gzip(&valid_images()), &mutations));
    }
}

/// Each file in `tests/corpus/` is a case that once needed care; none is a valid image file.
#[test]
fn corpus_cases_are_errors_not_panics() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let (images, _labels) = read_both(&bytes);
        assert!(images.is_err(), "{} was accepted as images", path.display());
        cases += 1;
    }
    assert!(cases >= 10, "the corpus has only {cases} cases");
}

#[test]
fn the_valid_file_the_mutations_start_from_is_valid() {
    let (images, _) = read_both(&valid_images());
    assert!(images.is_ok());
    let (images, _) = read_both(&gzip(&valid_images()));
    assert!(images.is_ok());
}
