//! `cargo afl fuzz` target: [`ccd_fuzz::jsonrpc`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| ccd_fuzz::jsonrpc(data));
}
