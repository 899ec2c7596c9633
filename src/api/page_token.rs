//! Opaque page tokens: where the last page ended, bound to the query that produced it (AIP-158).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::domain::Error;
use crate::store::Cursor;

/// A stable 64-bit FNV-1a hash of the parameters a token is only valid with; a token used with other
/// parameters is refused instead of returning a page of a different list.
pub fn query_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    q: u64,
    p: T,
}

fn encode<T: Serialize>(payload: T, query: u64) -> String {
    let json = serde_json::to_vec(&Envelope { q: query, p: payload }).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

fn decode<T: DeserializeOwned>(token: &str, query: u64) -> Result<Option<T>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid_field("page_token", "is not a page token this list returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let envelope: Envelope<T> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if envelope.q != query {
        return Err(Error::invalid_field(
            "page_token",
            "was issued for a different filter, order_by or show_deleted; keep them the same while paging",
        ));
    }
    Ok(Some(envelope.p))
}

/// Token of ListUsers.
#[derive(Serialize, Deserialize)]
pub struct PageToken {
    pub cursor: Cursor,
}

impl PageToken {
    pub fn encode(&self, query: u64) -> String {
        encode(&self.cursor, query)
    }

    pub fn decode(token: &str, query: u64) -> Result<Option<PageToken>, Error> {
        Ok(decode::<Cursor>(token, query)?.map(|cursor| PageToken { cursor }))
    }
}

/// Token of ListUserRevisions: the page continues below this revision number.
pub struct RevisionToken {
    pub before: i64,
}

impl RevisionToken {
    pub fn encode(&self, query: u64) -> String {
        encode(self.before, query)
    }

    pub fn decode(token: &str, query: u64) -> Result<Option<RevisionToken>, Error> {
        Ok(decode::<i64>(token, query)?.map(|before| RevisionToken { before }))
    }
}
