//! Stored values: a version byte, then postcard. Each kind of value keeps
//! its own version byte, so one can change its encoding alone.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// `value` after its `version` byte. `to_extend`, not `to_io`: `io::Write`
/// costs a memmove call per byte written.
#[allow(clippy::expect_used, reason = "serialising plain data into a Vec cannot fail")]
pub fn encode<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(257);
    out.push(version);
    postcard::to_extend(value, out).expect("plain data serialises")
}

/// A value `encode` wrote with `version`; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(version: u8, what: &str, bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => postcard::from_bytes(rest).map_err(|e| Error::Corrupt(e.to_string())),
        Some((v, _)) => Err(Error::Corrupt(format!("unknown {what} version {v}"))),
        None => Err(Error::Corrupt(format!("empty {what}"))),
    }
}
