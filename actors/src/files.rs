//! Reading files that a client names: only regular files, only up to a size, never blocking.
//!
//! A path from a request may point at a FIFO (whose `open` blocks until a writer comes), a
//! device (`/dev/zero` never ends) or a file of any size. Each of these must get an error, not
//! a stuck thread or an exhausted memory; callers run this on the blocking pool, since even a
//! regular file may sit on a slow disk.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The whole of the regular file at `path`, if it holds at most `max` bytes.
///
/// The file is opened with `O_NONBLOCK` (a FIFO then opens at once instead of waiting for a
/// writer) and `O_NOCTTY` (a terminal does not become the daemon's), and checked with `fstat`
/// on the open handle, so a file swapped for something else between a check and the read is
/// still refused.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        // O_NOCTTY: the daemon has no controlling terminal (it is a session leader), and
        // opening a terminal would make that one its own, and its hangup a SIGHUP to us.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    }
    if meta.len() > max {
        return Err(too_big(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the fstat: read one byte past the limit to notice.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big(max));
    }
    Ok(bytes)
}

/// As [`read_regular`], as UTF-8 text.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_big(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("larger than the limit of {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        let e = read_regular(&file, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);

        let e = read_regular(dir.path(), 100).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");

        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let e = read_regular(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        // A device that never ends.
        let e = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_regular_text(&file, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
