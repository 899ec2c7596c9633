//! Who is calling: the identity an authentication layer puts in the request extensions, and how much of a
//! token's values an error may repeat.

use std::borrow::Cow;

/// Most characters of a value taken from a token (its `kid`, its `sub`) that an error repeats. A token is as long
/// as a client likes (up to the header limit); echoed whole it would make every refusal as large, and over gRPC
/// it would outgrow the client's metadata limits.
pub const SHOWN_CHARS: usize = 200;

/// `value` as an error shows it: its first `SHOWN_CHARS` characters, with `…` marking a cut.
pub fn shown(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => Cow::Owned(format!("{}…", &value[..end])),
        None => Cow::Borrowed(value),
    }
}

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`; recorded as the `actor` of every revision the call writes.
    pub subject: String,
    pub scopes: Vec<String>,
}

impl Caller {
    /// The caller of a server that runs without authentication.
    pub fn anonymous() -> Caller {
        Caller {
            subject: "anonymous".to_owned(),
            scopes: Vec::new(),
        }
    }

    /// The subject as errors show it (cut, see `shown`).
    pub fn shown_subject(&self) -> Cow<'_, str> {
        shown(&self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_cut_to_200_characters() {
        assert_eq!(shown("short"), "short");
        let exact = "é".repeat(SHOWN_CHARS);
        assert_eq!(shown(&exact), exact, "at the limit nothing is cut");
        let long = format!("{exact}tail");
        assert_eq!(shown(&long), format!("{exact}…"), "cut on a character boundary");
        assert_eq!(shown(&"k".repeat(100_000)).chars().count(), SHOWN_CHARS + 1);
    }
}
