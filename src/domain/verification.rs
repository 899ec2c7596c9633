//! E-mail verification codes (API §8): how a code is made and stored, when one may be sent, the count of wrong
//! codes, and the errors of the flow.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use super::error::{Error, FieldViolation};

/// Random bytes in a code: 256 bits, well past the 128 the contract asks for.
const CODE_BYTES: usize = 32;
/// Wrong codes a user may send before every outstanding code of that user is void.
pub const MAX_WRONG_CODES: i32 = 5;
/// The least time between two SendVerificationEmail calls for one user.
pub const RESEND_INTERVAL: Duration = Duration::minutes(1);
/// The longest code a request may carry: a real one is 43 characters; anything much longer is not worth
/// hashing.
const MAX_CODE_CHARS: usize = 128;

/// A new code and the digest that is stored in its place.
pub struct NewCode {
    /// Goes to the user (mail or response) and nowhere else: never stored, never logged.
    pub plaintext: String,
    pub digest: String,
}

impl std::fmt::Debug for NewCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCode")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Makes a code from a CSPRNG (rand's thread generator: ChaCha seeded from the operating system), URL-safe
/// (base64url without padding).
pub fn new_code() -> NewCode {
    let mut bytes = [0u8; CODE_BYTES];
    rand::fill(&mut bytes);
    let plaintext = URL_SAFE_NO_PAD.encode(bytes);
    let digest = digest(&plaintext);
    NewCode { plaintext, digest }
}

/// The stored form of a code. A plain SHA-256 is enough here, unlike for passwords: a code is 256 random bits,
/// so no dictionary or brute force can invert its digest, and a slow hash would only make every check cost
/// more. It is also what makes lookup by digest possible (a salted hash could not be found by its value).
pub fn digest(code: &str) -> String {
    let hash = Sha256::digest(code.as_bytes());
    URL_SAFE_NO_PAD.encode(hash)
}

/// The one answer to a code that is wrong, expired, used, voided or another user's, so none tells which.
pub fn invalid_code(why: &str) -> Error {
    Error::InvalidArgument {
        reason: "INVALID_VERIFICATION_CODE",
        message: format!("verification_code: {why}"),
        violations: vec![FieldViolation::new("verification_code", why)],
    }
}

/// The message of a code that does not verify (wrong, expired, used, voided, another user's).
pub const NOT_VALID: &str = "is not a valid verification code for this user's address";
/// The message once the wrong codes are used up: the code was not checked at all.
pub const ALL_VOID: &str = "too many wrong codes: every code of this user is void; request a new one";

/// Checks the shape of a sent code before it is counted or looked up: empty codes are refused (only an
/// administrator may verify without one), over-long ones are not hashed.
pub fn check_code_shape(code: &str) -> Result<(), Error> {
    if code.is_empty() {
        return Err(invalid_code("is required"));
    }
    if code.chars().count() > MAX_CODE_CHARS {
        return Err(invalid_code(NOT_VALID));
    }
    Ok(())
}

/// A user's state as the flow sees it: wrong codes since the last code was made, and when the last
/// SendVerificationEmail was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodeAttempts {
    pub wrong: i32,
    pub last_sent: Option<DateTime<Utc>>,
}

/// Takes one code attempt before the code is compared, so concurrent guesses take the same turns sequential
/// ones do: refused without a check once [`MAX_WRONG_CODES`] were wrong; otherwise counted as wrong until the
/// right code resets it.
pub fn take_attempt(current: CodeAttempts) -> Result<CodeAttempts, Error> {
    if current.wrong >= MAX_WRONG_CODES {
        return Err(invalid_code(ALL_VOID));
    }
    Ok(CodeAttempts {
        wrong: current.wrong + 1,
        ..current
    })
}

/// Allows one SendVerificationEmail per user per [`RESEND_INTERVAL`]; a refusal tells how long to wait.
pub fn check_resend(current: CodeAttempts, now: DateTime<Utc>) -> Result<(), Error> {
    let Some(last) = current.last_sent else {
        return Ok(());
    };
    let next = last + RESEND_INTERVAL;
    if now >= next {
        return Ok(());
    }
    Err(Error::ResourceExhausted {
        reason: "VERIFICATION_THROTTLED",
        message: "a verification mail was sent to this user less than a minute ago; wait before asking again".into(),
        retry_after: (next - now).to_std().unwrap_or_default(),
    })
}

/// FAILED_PRECONDITION for a user whose address is already verified.
pub fn already_verified(id: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition {
        reason: "EMAIL_ALREADY_VERIFIED",
        subject: format!("users/{id}"),
        message: format!("the e-mail address of user {id} is already verified"),
    }
}

/// Whether a stored code still verifies: bound to the address it was sent to, unused, unexpired.
pub fn code_is_valid(
    bound_email_key: &str,
    current_email: &str,
    expire_time: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    bound_email_key == current_email.to_lowercase() && now < expire_time
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_random_url_safe_and_stored_as_their_digest() {
        let a = new_code();
        let b = new_code();
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.plaintext.len(), 43, "32 bytes in unpadded base64url");
        assert!(
            a.plaintext
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(digest(&a.plaintext), a.digest);
        assert_ne!(a.digest, a.plaintext);
        assert!(!format!("{a:?}").contains(&a.plaintext), "Debug never shows the code");
    }

    #[test]
    fn five_wrong_codes_then_none_is_checked() {
        let mut attempts = CodeAttempts::default();
        for _ in 0..MAX_WRONG_CODES {
            attempts = take_attempt(attempts).expect("allowed");
        }
        match take_attempt(attempts) {
            Err(Error::InvalidArgument { reason, violations, .. }) => {
                assert_eq!(reason, "INVALID_VERIFICATION_CODE");
                assert_eq!(violations[0].field, "verification_code");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_send_per_minute() {
        let now = Utc::now();
        assert!(check_resend(CodeAttempts::default(), now).is_ok());
        let recent = CodeAttempts {
            wrong: 0,
            last_sent: Some(now - Duration::seconds(20)),
        };
        match check_resend(recent, now) {
            Err(Error::ResourceExhausted {
                reason, retry_after, ..
            }) => {
                assert_eq!(reason, "VERIFICATION_THROTTLED");
                assert_eq!(retry_after.as_secs(), 40);
            }
            other => panic!("{other:?}"),
        }
        let old = CodeAttempts {
            wrong: 0,
            last_sent: Some(now - Duration::seconds(61)),
        };
        assert!(check_resend(old, now).is_ok());
    }

    #[test]
    fn a_code_is_bound_to_its_address_and_time() {
        let now = Utc::now();
        let later = now + Duration::hours(1);
        assert!(code_is_valid("ann@example.com", "Ann@Example.com", later, now));
        assert!(!code_is_valid("ann@example.com", "bo@example.com", later, now));
        assert!(!code_is_valid("ann@example.com", "ann@example.com", now, now));
        assert!(check_code_shape("").is_err());
        assert!(check_code_shape(&"x".repeat(129)).is_err());
        assert!(check_code_shape("abc").is_ok());
    }
}
