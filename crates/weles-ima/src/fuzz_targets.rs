//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the tests that replay their
//! corpora on stable Rust. Each must return normally for every input: no panic, bounded work.

use crate::binary::{BinaryReader, ByteOrder, Limits};
use crate::verify::{AcceptAll, Config, Verifier};
use crate::{ascii::AsciiReader, verify_parallel};

/// The binary parser in both byte orders, the incremental verifier in two splits, and the
/// parallel verifier with small chunks.
pub fn ima_binary(data: &[u8]) {
    for order in [ByteOrder::Little, ByteOrder::Big] {
        // The reader stops after its first error.
        for e in BinaryReader::new(data, order, 0, 0, Limits::default()).flatten() {
            let _ = e.template_hash_ok();
            let _ = e.file_digest_value();
        }
    }
    let mut v = Verifier::new(Config::default());
    let half = data.len() / 2;
    if v.feed(&data[..half], &AcceptAll).is_ok() && v.feed(&data[half..], &AcceptAll).is_ok() {
        let _ = v.finish(&AcceptAll);
    }
    let config = Config {
        chunk_bytes: 64,
        ..Config::default()
    };
    let _ = verify_parallel(data, &config, &[], 2, || Ok::<_, ()>(AcceptAll));
}

/// The ASCII parser (complete and streaming) and the verifier over it.
pub fn ima_ascii(data: &[u8]) {
    for complete in [true, false] {
        for e in
            AsciiReader::new(data, ByteOrder::Little, 0, 0, Limits::default(), complete).flatten()
        {
            let _ = e.template_hash_ok();
            let _ = crate::write::ascii_line(&e, ByteOrder::Little);
        }
    }
    let mut v = Verifier::new(Config::default());
    let _ = v.verify_all(data, &AcceptAll);
}
