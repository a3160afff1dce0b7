//! `cargo afl fuzz` target: [`ccd_fuzz::codec`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| ccd_fuzz::codec(data));
}
