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

/// The network configuration on stdin.
pub fn read_stdin() -> Result<Vec<u8>, Error> {
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        Error::new(Code::Io, "cannot read the network configuration from stdin")
            .with_details(e.to_string())
    })?;
    Ok(stdin)
}
