//! A plugin's whole exchange with the runtime: the result (or nothing) on stdout and exit 0,
//! or the error JSON on stdout and exit 1. Nothing else ever goes to stdout.

use std::io::Read;

use crate::error::{Code, Error};
use crate::version;

/// Runs `f`, which may set the version to reply in (the config's, once parsed), and prints
/// its outcome; returns the exit code.
pub fn run(f: impl FnOnce(&mut String) -> Result<Option<String>, Error>) -> i32 {
    let mut reply_version = version::CURRENT.to_string();
    match f(&mut reply_version) {
        Ok(Some(out)) => {
            println!("{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            println!("{}", e.to_json(&reply_version));
            1
        }
    }
}

/// The largest network configuration a plugin reads. A real one is a few KiB (a
/// `prevResult` and a GC's `cni.dev/valid-attachments` of thousands of pods stay well
/// under this); anything larger is refused before it is parsed.
pub const MAX_STDIN: usize = 1 << 20;

/// The network configuration on stdin, at most `MAX_STDIN` bytes.
pub fn read_stdin() -> Result<Vec<u8>, Error> {
    read_bounded(std::io::stdin().lock())
}

/// Reads `r` to its end, refusing more than `MAX_STDIN` bytes (code 7).
pub fn read_bounded(r: impl Read) -> Result<Vec<u8>, Error> {
    let mut stdin = Vec::new();
    r.take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| {
            Error::new(Code::Io, "cannot read the network configuration from stdin")
                .with_details(e.to_string())
        })?;
    if stdin.len() > MAX_STDIN {
        return Err(Error::new(
            Code::InvalidConfig,
            format!("network configuration on stdin is larger than {MAX_STDIN} bytes (1 MiB)"),
        ));
    }
    Ok(stdin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_bounded() {
        assert_eq!(
            read_bounded(&[b' '; MAX_STDIN][..]).unwrap().len(),
            MAX_STDIN
        );
        let e = read_bounded(std::io::repeat(b' ')).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("1048576"), "{}", e.msg);
    }
}
