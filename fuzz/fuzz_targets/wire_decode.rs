//! Untrusted bytes into the memory node's frame decoder: it must never panic, and what it
//! accepts must encode back to the same bytes. `cargo test -p farmem-wire` replays the
//! corpus (fuzz/corpus/wire_decode) on stable, so CI checks every input found here.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    farmem_wire::check_untrusted(data);
});
