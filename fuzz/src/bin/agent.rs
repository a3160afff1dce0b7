//! `cargo afl fuzz` target: [`ccd_fuzz::agent`] on each input.

fn main() {
    afl::fuzz!(|data: &[u8]| ccd_fuzz::agent(data));
}
