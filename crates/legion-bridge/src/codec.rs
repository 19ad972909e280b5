//! Task arguments and results travel as bincode (standard configuration, serde types).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| Error::Encode {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| Error::Decode {
        what,
        reason: e.to_string(),
    })?;
    if used != bytes.len() {
        return Err(Error::Decode {
            what,
            reason: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}
