//! The GGUF header reader (candle's parser plus lift's checks of the metadata and the tokenizer
//! it rebuilds) on any bytes: an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::path::Path::new("fuzz.gguf");
    let _ = lift_engine::loader::read_gguf_header(&mut std::io::Cursor::new(bytes), path);
});
