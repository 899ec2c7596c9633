//! Field rules of the User resource: normalization and validation that reports every violation at once.
//!
//! A string field reports at most one violation, the first rule it breaks (NUL characters first), so a
//! response lists every bad field without repeating one field for each consequence of the same mistake. Rules a
//! client fixes independently are reported independently: a label's key and value, the shape and the content
//! of attributes, a time's range and its order, a password's length and its character classes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::io;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::{Map, Value};

use crate::domain::error::FieldViolation;
use crate::domain::field_table::{Behavior, UserField};
use crate::domain::user::{Membership, UserFields};

/// Roles travel in tokens and are evaluated on every authorization check; 100 is far more than any real
/// user holds and keeps both bounded.
pub const MAX_ROLES: usize = 100;
/// Memberships are stored and returned with the user; 100 keeps a user's row and responses small.
pub const MAX_MEMBERSHIPS: usize = 100;
/// Labels are for filtering and grouping, not storage; 64 is the same order as other cloud APIs allow.
pub const MAX_LABELS: usize = 64;
/// Attributes are a small profile extension, not a document store: 16 KiB of JSON keeps rows and
/// responses small.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Real profile data is a few levels deep; the bound keeps every recursive encoder and decoder that touches
/// attributes far from its own recursion limit: each JSON level is three protobuf levels in a `Struct`
/// (Struct, map entry, Value), and protobuf decoders stop at 100.
pub const MAX_ATTRIBUTES_DEPTH: usize = 20;
/// Long enough for any passphrase, short enough that hashing a hostile password costs nothing extra.
pub const MAX_PASSWORD_CHARS: usize = 256;

const MIN_PASSWORD_CHARS: usize = 8;
const MIN_USERNAME_CHARS: usize = 3;
pub const MAX_USERNAME_CHARS: usize = 64;
/// RFC 5321 limits a forward path to 256 octets including the angle brackets.
pub const MAX_EMAIL_CHARS: usize = 254;
const MAX_EMAIL_LOCAL_PART_CHARS: usize = 64;
const MAX_EMAIL_DOMAIN_CHARS: usize = 253;
const MAX_DNS_LABEL_CHARS: usize = 63;
pub(crate) const MAX_NAME_CHARS: usize = 200;
pub(crate) const MAX_NATIONAL_ID_CHARS: usize = 64;
pub(crate) const MAX_ADDRESS_CHARS: usize = 500;
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 2000;
/// RFC 5646 asks implementations to accept tags of at least 35 characters; longer ones are not in use.
const MAX_LANGUAGE_TAG_CHARS: usize = 35;
/// The de-facto limit of browsers and CDNs.
const MAX_IMAGE_URI_CHARS: usize = 2048;
const MAX_LABEL_KEY_CHARS: usize = 63;
const MAX_LABEL_VALUE_CHARS: usize = 256;
const MAX_ROLE_CHARS: usize = 64;
const MAX_ORGANIZATION_ID_CHARS: usize = 128;
/// Older birth dates are typos (a four-digit year off by a century), not people.
const MIN_BIRTH_YEAR: i32 = 1850;
/// Longer keys and paths are cut when shown in a violation, so a hostile value is never echoed in full.
const MAX_SHOWN_CHARS: usize = 80;

/// PostgreSQL `text` cannot store U+0000, so every string is checked for it before anything else.
const NUL_DESCRIPTION: &str = "must not contain NUL characters";
const CONTROL_DESCRIPTION: &str = "must not contain control characters";

/// Brings values to their stored form before validation: username lower-cased, region_code upper-cased,
/// language_code in canonical BCP 47 case (language lower, script Title, region upper), e.g. "ES-co" -> "es-CO".
/// Leaves anything it cannot interpret untouched (validation then reports it). Does NOT trim whitespace.
pub fn normalize(fields: &mut UserFields) {
    for field in UserField::ALL {
        if let (Some(rule), Some(value)) = (field.text_rule(), fields.text_mut(field)) {
            normalize_text(rule, value);
        }
    }
}

/// The rule a string field of `User` follows; the field table names one for every string field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRule {
    Username,
    Email,
    /// Free text on one line, of at most this many characters.
    SingleLine(usize),
    /// Free text that may hold line breaks, of at most this many characters.
    MultiLine(usize),
    PhoneNumber,
    BirthDate,
    LanguageCode,
    RegionCode,
    TimeZone,
    ImageUri,
}

fn normalize_text(rule: TextRule, value: &mut String) {
    match rule {
        // ASCII-only case mapping: Unicode lower-casing would turn look-alikes such as the Kelvin sign (U+212A)
        // into valid ASCII names; left as they are, validation rejects them.
        TextRule::Username => value.make_ascii_lowercase(),
        TextRule::RegionCode => value.make_ascii_uppercase(),
        TextRule::LanguageCode => {
            if let Ok(canonical) = canonical_language_tag(value) {
                *value = canonical;
            }
        }
        _ => {}
    }
}

/// Checks a non-empty string without NUL against its rule.
fn check_text(rule: TextRule, value: &str, today: NaiveDate) -> Result<(), String> {
    match rule {
        TextRule::Username => check_username(value),
        TextRule::Email => check_email(value),
        TextRule::SingleLine(max) => single_line_text(value, max),
        TextRule::MultiLine(max) => multi_line_text(value, max),
        TextRule::PhoneNumber => check_phone_number(value),
        TextRule::BirthDate => check_birth_date(value, today),
        TextRule::LanguageCode => check_language_code(value),
        TextRule::RegionCode => check_region_code(value),
        TextRule::TimeZone => check_time_zone(value),
        TextRule::ImageUri => check_image_uri(value),
    }
}

/// Appends one FieldViolation per broken rule of `fields` to `out`; `prefix` is the path of the user message in the
/// request, e.g. "user" or "requests[3].user", so violations read "user.email", "user.labels[bad key]",
/// "user.roles[2]", "user.memberships[1].organization_id", "user.attributes", "user.expire_time".
/// `today` is the current UTC date, passed in for testability.
/// Empty strings mean "unset" and are valid for every field except email (required: "is required").
pub fn validate_fields(fields: &UserFields, prefix: &str, today: NaiveDate, out: &mut Vec<FieldViolation>) {
    let mut v = Violations { prefix, out };

    for field in UserField::ALL {
        let (Some(rule), Some(value)) = (field.text_rule(), fields.text(field)) else {
            continue;
        };
        let result = if value.is_empty() && field.behavior() == Behavior::Required {
            Err("is required".to_owned())
        } else {
            optional(value, |s| check_text(rule, s, today))
        };
        v.check(field.name(), result);
    }

    check_labels(&mut v, &fields.labels);
    check_roles(&mut v, &fields.roles);
    check_memberships(&mut v, &fields.memberships);
    if let Some(attributes) = &fields.attributes {
        check_attributes(&mut v, attributes);
    }
    check_validity_period(&mut v, fields.valid_from, fields.expire_time);
}

/// Password policy; `field` is the full path (e.g. "user.password").
///
/// The password itself never appears in a description. Letters and digits are Unicode-aware: a symbol is any
/// character that is neither alphanumeric, whitespace nor a control character.
pub fn validate_password(password: &str, field: &str, out: &mut Vec<FieldViolation>) {
    if password.chars().any(char::is_control) {
        out.push(FieldViolation::new(field, CONTROL_DESCRIPTION));
    }

    let too_short = !has_more_chars_than(password, MIN_PASSWORD_CHARS - 1);
    if too_short {
        out.push(FieldViolation::new(
            field,
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    } else if has_more_chars_than(password, MAX_PASSWORD_CHARS) {
        out.push(FieldViolation::new(
            field,
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }

    let has = |class: fn(char) -> bool| password.chars().any(class);
    let mut missing = Vec::new();
    if !has(char::is_uppercase) {
        missing.push("an upper-case letter");
    }
    if !has(char::is_lowercase) {
        missing.push("a lower-case letter");
    }
    if !has(char::is_numeric) {
        missing.push("a digit");
    }
    if !has(is_symbol) {
        missing.push("a symbol");
    }
    if !missing.is_empty() {
        out.push(FieldViolation::new(
            field,
            format!("must contain {}", english_list(&missing)),
        ));
    }
}

/// Whatever is neither a letter, a digit, whitespace nor a control character counts as a symbol, so every
/// printable character of a password falls in exactly one class.
fn is_symbol(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control()
}

/// True for a label key `[a-z0-9_-]{1,63}` (also used by the field-mask and filter code).
pub fn is_label_key(key: &str) -> bool {
    (1..=MAX_LABEL_KEY_CHARS).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// True for a role `[a-z0-9_.:-]{1,64}`.
pub fn is_role(role: &str) -> bool {
    (1..=MAX_ROLE_CHARS).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Collects violations under the request path of the user message.
struct Violations<'a> {
    prefix: &'a str,
    out: &'a mut Vec<FieldViolation>,
}

impl Violations<'_> {
    fn add(&mut self, field: impl fmt::Display, description: impl Into<String>) {
        let path = if self.prefix.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.out.push(FieldViolation::new(path, description));
    }

    fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(description) = result {
            self.add(field, description);
        }
    }
}

/// The rules every optional string field shares: empty means unset, and NUL is never storable. `rule` then
/// sees a non-empty value without NUL.
fn optional(value: &str, rule: impl FnOnce(&str) -> Result<(), String>) -> Result<(), String> {
    if value.is_empty() {
        Ok(())
    } else if value.contains('\0') {
        Err(NUL_DESCRIPTION.to_owned())
    } else {
        rule(value)
    }
}

/// Counts at most `max + 1` characters, so a huge value costs no more than a short one.
fn has_more_chars_than(value: &str, max: usize) -> bool {
    value.len() > max && value.chars().nth(max).is_some()
}

fn at_most_chars(value: &str, max: usize) -> Result<(), String> {
    if has_more_chars_than(value, max) {
        Err(format!("must be at most {max} characters"))
    } else {
        Ok(())
    }
}

/// Names and identifiers: one line, no control characters at all.
fn single_line_text(value: &str, max_chars: usize) -> Result<(), String> {
    at_most_chars(value, max_chars)?;
    if value.chars().any(char::is_control) {
        return Err(CONTROL_DESCRIPTION.to_owned());
    }
    Ok(())
}

/// Free text that may span lines: line breaks and tabs are fine, other control characters are not.
fn multi_line_text(value: &str, max_chars: usize) -> Result<(), String> {
    at_most_chars(value, max_chars)?;
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("must not contain control characters other than line breaks and tabs".to_owned());
    }
    Ok(())
}

fn check_username(username: &str) -> Result<(), String> {
    let valid_chars = username
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if valid_chars && (MIN_USERNAME_CHARS..=MAX_USERNAME_CHARS).contains(&username.len()) {
        Ok(())
    } else {
        Err(format!(
            "must be {MIN_USERNAME_CHARS} to {MAX_USERNAME_CHARS} characters of a-z, 0-9, '.', '_' or '-'"
        ))
    }
}

/// A syntactic check of the common `local@domain` form; quoted local parts, IP-literal domains and
/// non-ASCII addresses are not accepted because mail systems handle them inconsistently.
fn check_email(email: &str) -> Result<(), String> {
    at_most_chars(email, MAX_EMAIL_CHARS)?;
    if email.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".to_owned());
    }
    email_syntax(email).map_err(|problem| format!("must be a valid email address: {problem}"))
}

/// The symbols RFC 5322 allows unquoted in the local part of an address (`atext`).
const ATEXT_SYMBOLS: &[u8] = b"!#$%&'*+/=?^_`{|}~-";

fn email_syntax(email: &str) -> Result<(), &'static str> {
    let Some((local, domain)) = email.split_once('@') else {
        return Err("it needs an '@'");
    };
    if domain.contains('@') {
        return Err("it must contain exactly one '@'");
    }

    if local.is_empty() {
        return Err("the part before '@' must not be empty");
    }
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || ATEXT_SYMBOLS.contains(&b))
    {
        return Err("the part before '@' may only contain letters, digits, '.' and !#$%&'*+/=?^_`{|}~-");
    }
    // All ASCII from here on, so byte lengths are character counts.
    if local.len() > MAX_EMAIL_LOCAL_PART_CHARS {
        return Err("the part before '@' must be at most 64 characters");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("the part before '@' must not start or end with '.' or contain '..'");
    }

    if domain.is_empty() {
        return Err("the domain after '@' must not be empty");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("the domain may only contain letters, digits, '-' and '.'");
    }
    if domain.len() > MAX_EMAIL_DOMAIN_CHARS {
        return Err("the domain must be at most 253 characters");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain needs at least two labels, as in example.com");
    }
    for label in &labels {
        if label.is_empty() || label.len() > MAX_DNS_LABEL_CHARS {
            return Err("each part of the domain between dots must be 1 to 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("no part of the domain may start or end with '-'");
        }
    }
    if labels.last().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit())) {
        return Err("the top-level domain must not be all digits");
    }
    Ok(())
}

fn check_phone_number(phone: &str) -> Result<(), String> {
    let valid = phone.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
    });
    if valid {
        Ok(())
    } else {
        Err("must be an E.164 number: '+' then 8 to 15 digits, the first not 0".to_owned())
    }
}

fn check_birth_date(value: &str, today: NaiveDate) -> Result<(), String> {
    let well_formed = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !well_formed {
        return Err("must be a date in the form YYYY-MM-DD".to_owned());
    }
    // The shape is right, so the only way parsing fails is a day that does not exist (2023-02-29).
    let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") else {
        return Err("is not a real calendar date".to_owned());
    };
    if date.year() < MIN_BIRTH_YEAR {
        return Err(format!("must not be before {MIN_BIRTH_YEAR}"));
    }
    // One day of slack: it is already tomorrow in time zones ahead of UTC.
    let latest = today.succ_opt().unwrap_or(today);
    if date > latest {
        return Err("must not be in the future".to_owned());
    }
    Ok(())
}

fn check_language_code(tag: &str) -> Result<(), String> {
    at_most_chars(tag, MAX_LANGUAGE_TAG_CHARS)?;
    canonical_language_tag(tag)
        .map(drop)
        .map_err(|problem| format!("must be a BCP 47 language tag such as es, es-CO or zh-Hant-TW: {problem}"))
}

/// Parses a BCP 47 tag (RFC 5646 `langtag`, without extlang, grandfathered or private-use-only tags) and
/// returns it in the case RFC 5646 recommends: everything lower-case except a Title-case script and an
/// upper-case two-letter region. The error says what is wrong without echoing the tag.
fn canonical_language_tag(tag: &str) -> Result<String, &'static str> {
    let subtags: Vec<&str> = tag.split('-').collect();
    if subtags.iter().any(|s| s.is_empty()) {
        return Err("subtags must be non-empty and separated by a single '-'");
    }
    if !subtags.iter().all(|s| s.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err("subtags may only contain letters and digits");
    }

    let is_alpha = |s: &str| s.bytes().all(|b| b.is_ascii_alphabetic());
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mut canonical = String::with_capacity(tag.len());
    let mut push = |subtag: &str| {
        if !canonical.is_empty() {
            canonical.push('-');
        }
        canonical.push_str(subtag);
    };
    let mut rest = subtags.into_iter().peekable();

    let language = rest.next().unwrap_or_default();
    if !((2..=8).contains(&language.len()) && is_alpha(language)) {
        return Err("it must start with a language of 2 to 8 letters");
    }
    push(&language.to_ascii_lowercase());

    if let Some(script) = rest.next_if(|s| s.len() == 4 && is_alpha(s)) {
        let (first, others) = script.split_at(1);
        push(&format!(
            "{}{}",
            first.to_ascii_uppercase(),
            others.to_ascii_lowercase()
        ));
    }

    if let Some(region) = rest.next_if(|s| (s.len() == 2 && is_alpha(s)) || (s.len() == 3 && is_digits(s))) {
        push(&region.to_ascii_uppercase());
    }

    let mut variants: Vec<String> = Vec::new();
    while let Some(variant) =
        rest.next_if(|s| (5..=8).contains(&s.len()) || (s.len() == 4 && s.starts_with(|c: char| c.is_ascii_digit())))
    {
        let variant = variant.to_ascii_lowercase();
        if variants.contains(&variant) {
            return Err("a variant must not appear twice");
        }
        push(&variant);
        variants.push(variant);
    }

    let mut singletons: Vec<String> = Vec::new();
    while let Some(singleton) = rest.next_if(|s| s.len() == 1 && !s.eq_ignore_ascii_case("x")) {
        let singleton = singleton.to_ascii_lowercase();
        if singletons.contains(&singleton) {
            return Err("an extension must not appear twice");
        }
        push(&singleton);
        singletons.push(singleton);
        let mut extension_subtags = 0;
        while let Some(subtag) = rest.next_if(|s| (2..=8).contains(&s.len())) {
            push(&subtag.to_ascii_lowercase());
            extension_subtags += 1;
        }
        if extension_subtags == 0 {
            return Err("an extension singleton must be followed by subtags of 2 to 8 characters");
        }
    }

    if let Some(x) = rest.next_if(|s| s.eq_ignore_ascii_case("x")) {
        push(&x.to_ascii_lowercase());
        let mut private_subtags = 0;
        while let Some(subtag) = rest.next_if(|s| (1..=8).contains(&s.len())) {
            push(&subtag.to_ascii_lowercase());
            private_subtags += 1;
        }
        if private_subtags == 0 {
            return Err("'x' must be followed by private-use subtags of 1 to 8 characters");
        }
    }

    if rest.next().is_some() {
        return Err("a subtag is out of place or has the wrong length");
    }
    Ok(canonical)
}

fn check_region_code(code: &str) -> Result<(), String> {
    if ISO_3166_ALPHA_2.binary_search(&code).is_ok() {
        Ok(())
    } else {
        Err("must be an assigned ISO 3166-1 alpha-2 country code, such as CO or US".to_owned())
    }
}

fn check_time_zone(zone: &str) -> Result<(), String> {
    zone.parse::<chrono_tz::Tz>()
        .map(drop)
        .map_err(|_| "is not an IANA time zone name, such as America/Bogota or UTC".to_owned())
}

fn check_image_uri(uri: &str) -> Result<(), String> {
    at_most_chars(uri, MAX_IMAGE_URI_CHARS)?;
    // The URL parser silently strips surrounding spaces and removes tabs and newlines, so it would accept
    // a value that differs from the one stored; URIs never contain them anyway.
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    let Ok(url) = url::Url::parse(uri) else {
        return Err("must be an absolute http or https URL".to_owned());
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use the http or https scheme".to_owned());
    }
    if url.host().is_none() {
        return Err("must have a host".to_owned());
    }
    Ok(())
}

fn check_labels(v: &mut Violations<'_>, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        v.add("labels", format!("must have at most {MAX_LABELS} entries"));
    }
    // Entries past the limit are not checked, which bounds the violations a hostile request can produce.
    for (key, value) in labels.iter().take(MAX_LABELS) {
        let field = format!("labels[{}]", shown(key));
        if key.contains('\0') {
            v.add(&field, "key must not contain NUL characters");
        } else if !is_label_key(key) {
            v.add(&field, "key must be 1 to 63 characters of a-z, 0-9, '_' or '-'");
        }
        if value.contains('\0') {
            v.add(&field, "value must not contain NUL characters");
        } else if has_more_chars_than(value, MAX_LABEL_VALUE_CHARS) {
            v.add(
                &field,
                format!("value must be at most {MAX_LABEL_VALUE_CHARS} characters"),
            );
        }
    }
}

/// A role in the user's list or in a membership: NUL first, like every string, then the role pattern.
fn check_role(role: &str) -> Result<(), String> {
    if role.contains('\0') {
        Err(NUL_DESCRIPTION.to_owned())
    } else if !is_role(role) {
        Err("must be 1 to 64 characters of a-z, 0-9, '_', '.', ':' or '-'".to_owned())
    } else {
        Ok(())
    }
}

fn check_roles(v: &mut Violations<'_>, roles: &[String]) {
    if roles.len() > MAX_ROLES {
        v.add("roles", format!("must have at most {MAX_ROLES} entries"));
    }
    // Entries past the limit are not checked, which bounds the violations a hostile request can produce.
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, role) in roles.iter().take(MAX_ROLES).enumerate() {
        let first = *first_index.entry(role.as_str()).or_insert(i);
        if let Err(description) = check_role(role) {
            v.add(format_args!("roles[{i}]"), description);
        } else if first != i {
            v.add(format_args!("roles[{i}]"), format!("duplicates roles[{first}]"));
        }
    }
}

fn check_memberships(v: &mut Violations<'_>, memberships: &[Membership]) {
    if memberships.len() > MAX_MEMBERSHIPS {
        v.add("memberships", format!("must have at most {MAX_MEMBERSHIPS} entries"));
    }
    // Entries past the limit are not checked, which bounds the violations a hostile request can produce.
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, membership) in memberships.iter().take(MAX_MEMBERSHIPS).enumerate() {
        let organization_id = membership.organization_id.as_str();
        let first = *first_index.entry(organization_id).or_insert(i);
        let organization_result = if organization_id.is_empty() {
            Err("is required".to_owned())
        } else if first != i {
            Err(format!("duplicates memberships[{first}].organization_id"))
        } else {
            optional(organization_id, |s| single_line_text(s, MAX_ORGANIZATION_ID_CHARS))
        };
        if let Err(description) = organization_result {
            v.add(format_args!("memberships[{i}].organization_id"), description);
        }
        // A membership may leave its role unset.
        if let Err(description) = optional(&membership.role, check_role) {
            v.add(format_args!("memberships[{i}].role"), description);
        }
    }
}

fn check_attributes(v: &mut Violations<'_>, attributes: &Map<String, Value>) {
    let mut scan = AttributeScan::default();
    scan.scan_object(attributes, 1);
    if let Some(path) = &scan.too_deep_at {
        v.add(
            "attributes",
            format!("must be nested at most {MAX_ATTRIBUTES_DEPTH} levels deep (too deep at {path})"),
        );
    } else if encoded_size_exceeds(attributes, MAX_ATTRIBUTES_BYTES) {
        // Only measured within the depth limit: JSON encoding recurses without a bound of its own.
        v.add(
            "attributes",
            format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes when encoded as JSON"),
        );
    }
    if let Some(path) = &scan.nul_at {
        v.add("attributes", format!("{NUL_DESCRIPTION} (found at {path})"));
    }
}

/// One step of the path to a nested attribute value, kept as references and formatted only when reported.
enum PathSegment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Walks attributes once, remembering where the first too-deep container and the first NUL character are.
/// The walk never descends past the depth limit, so its own recursion is bounded.
#[derive(Default)]
struct AttributeScan<'a> {
    path: Vec<PathSegment<'a>>,
    too_deep_at: Option<String>,
    nul_at: Option<String>,
}

impl<'a> AttributeScan<'a> {
    /// `depth` is the nesting depth of `object` itself; the top-level object is depth 1.
    fn scan_object(&mut self, object: &'a Map<String, Value>, depth: usize) {
        for (key, value) in object {
            self.path.push(PathSegment::Key(key));
            if key.contains('\0') {
                self.note_nul();
            }
            self.scan_value(value, depth);
            self.path.pop();
        }
    }

    /// `parent_depth` is the nesting depth of the container holding `value`.
    fn scan_value(&mut self, value: &'a Value, parent_depth: usize) {
        match value {
            Value::String(s) if s.contains('\0') => self.note_nul(),
            Value::Array(items) if self.may_enter(parent_depth + 1) => {
                for (i, item) in items.iter().enumerate() {
                    self.path.push(PathSegment::Index(i));
                    self.scan_value(item, parent_depth + 1);
                    self.path.pop();
                }
            }
            Value::Object(object) if self.may_enter(parent_depth + 1) => {
                self.scan_object(object, parent_depth + 1);
            }
            _ => {}
        }
    }

    fn may_enter(&mut self, depth: usize) -> bool {
        if depth <= MAX_ATTRIBUTES_DEPTH {
            return true;
        }
        if self.too_deep_at.is_none() {
            self.too_deep_at = Some(self.path_text());
        }
        false
    }

    fn note_nul(&mut self) {
        if self.nul_at.is_none() {
            self.nul_at = Some(self.path_text());
        }
    }

    fn path_text(&self) -> String {
        let mut text = String::new();
        for segment in &self.path {
            // Writing to a String cannot fail.
            let _ = match segment {
                PathSegment::Key(key) if text.is_empty() => write!(text, "{key}"),
                PathSegment::Key(key) => write!(text, ".{key}"),
                PathSegment::Index(i) => write!(text, "[{i}]"),
            };
        }
        shown(&text)
    }
}

/// Whether `attributes` encode to more than `limit` bytes of JSON (as `serde_json::to_vec` would), found
/// without building the encoding: the counting writer aborts as soon as the limit is passed.
fn encoded_size_exceeds(attributes: &Map<String, Value>, limit: usize) -> bool {
    struct ByteCounter {
        bytes: usize,
        limit: usize,
    }
    impl io::Write for ByteCounter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes = self.bytes.saturating_add(buf.len());
            if self.bytes > self.limit {
                Err(io::Error::other("size limit passed"))
            } else {
                Ok(buf.len())
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    // A map with string keys always encodes, so the only error is the counter stopping at the limit.
    serde_json::to_writer(&mut ByteCounter { bytes: 0, limit }, attributes).is_err()
}

fn check_validity_period(
    v: &mut Violations<'_>,
    valid_from: Option<DateTime<Utc>>,
    expire_time: Option<DateTime<Utc>>,
) {
    // chrono reaches far beyond the years a protobuf Timestamp and the databases can hold.
    let in_range = |t: DateTime<Utc>| (1..=9999).contains(&t.year());
    if valid_from.is_some_and(|t| !in_range(t)) {
        v.add("valid_from", "must be between the years 1 and 9999");
    }
    if expire_time.is_some_and(|t| !in_range(t)) {
        v.add("expire_time", "must be between the years 1 and 9999");
    }
    if valid_from.zip(expire_time).is_some_and(|(from, expire)| from >= expire) {
        v.add("expire_time", "must be after valid_from");
    }
}

/// A client-supplied key or path as shown in a violation: control characters escaped so the text stays
/// printable, and cut after `MAX_SHOWN_CHARS` characters with "…".
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// "a", "a and b", "a, b and c".
fn english_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The assigned ISO 3166-1 alpha-2 codes (249, as in tzdata's iso3166.tab), sorted for binary search.
#[rustfmt::skip]
const ISO_3166_ALPHA_2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ",
    "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ",
    "DE", "DJ", "DK", "DM", "DO", "DZ",
    "EC", "EE", "EG", "EH", "ER", "ES", "ET",
    "FI", "FJ", "FK", "FM", "FO", "FR",
    "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY",
    "HK", "HM", "HN", "HR", "HT", "HU",
    "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT",
    "JE", "JM", "JO", "JP",
    "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ",
    "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY",
    "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ",
    "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ",
    "OM",
    "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY",
    "QA",
    "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ",
    "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ",
    "UA", "UG", "UM", "US", "UY", "UZ",
    "VA", "VC", "VE", "VG", "VI", "VN", "VU",
    "WF", "WS",
    "YE", "YT",
    "ZA", "ZM", "ZW",
];

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use serde_json::json;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 6, 15).expect("valid date")
    }

    /// The smallest valid user: only the required email.
    fn valid_user() -> UserFields {
        UserFields {
            email: "ana@example.com".to_owned(),
            ..UserFields::default()
        }
    }

    fn user_with(change: impl FnOnce(&mut UserFields)) -> UserFields {
        let mut fields = valid_user();
        change(&mut fields);
        fields
    }

    fn violations(fields: &UserFields) -> Vec<FieldViolation> {
        let mut out = Vec::new();
        validate_fields(fields, "user", today(), &mut out);
        out
    }

    fn paths(violations: &[FieldViolation]) -> Vec<&str> {
        violations.iter().map(|v| v.field.as_str()).collect()
    }

    #[track_caller]
    fn assert_valid(change: impl FnOnce(&mut UserFields)) {
        let found = violations(&user_with(change));
        assert!(found.is_empty(), "unexpected violations: {found:?}");
    }

    /// Asserts exactly one violation, on `path`, and returns its description.
    #[track_caller]
    fn assert_one_violation(path: &str, change: impl FnOnce(&mut UserFields)) -> String {
        let found = violations(&user_with(change));
        assert_eq!(paths(&found), [path], "violations: {found:?}");
        found.into_iter().next().map(|v| v.description).unwrap_or_default()
    }

    fn password_violations(password: &str) -> Vec<String> {
        let mut out = Vec::new();
        validate_password(password, "user.password", &mut out);
        assert!(out.iter().all(|v| v.field == "user.password"));
        out.into_iter().map(|v| v.description).collect()
    }

    #[test]
    fn a_fully_populated_valid_user_has_no_violations() {
        let fields = UserFields {
            username: "ana.maria_01".to_owned(),
            email: "ana.maria+tag@mail.example.co".to_owned(),
            given_name: "Ana María".to_owned(),
            family_name: "Núñez".to_owned(),
            phone_number: "+573001234567".to_owned(),
            national_id: "CC 1.234.567".to_owned(),
            address: "Calle 1 # 2-3\r\nApto 4\tBogotá".to_owned(),
            birth_date: "1990-02-28".to_owned(),
            language_code: "es-CO".to_owned(),
            region_code: "CO".to_owned(),
            time_zone: "America/Bogota".to_owned(),
            image_uri: "https://cdn.example.com/a.png".to_owned(),
            description: "Line one\nLine two".to_owned(),
            labels: BTreeMap::from([
                ("team".to_owned(), "core".to_owned()),
                ("x_1-y".to_owned(), String::new()),
            ]),
            roles: vec!["admin".to_owned(), "billing:read".to_owned(), "org.viewer".to_owned()],
            memberships: vec![
                Membership {
                    organization_id: "org-1".to_owned(),
                    role: "owner".to_owned(),
                    admin: true,
                },
                Membership {
                    organization_id: "org-2".to_owned(),
                    role: String::new(),
                    admin: false,
                },
            ],
            attributes: json!({"shoe_size": 42, "tags": ["a", {"b": null}]})
                .as_object()
                .cloned(),
            valid_from: Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("valid time")),
            expire_time: Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("valid time")),
        };
        assert_eq!(violations(&fields), []);
    }

    #[test]
    fn empty_strings_are_unset_except_email() {
        assert_valid(|_| {});
        let description = assert_one_violation("user.email", |u| u.email.clear());
        assert_eq!(description, "is required");
    }

    #[test]
    fn prefix_is_prepended_to_every_path() {
        let fields = user_with(|u| {
            u.email.clear();
            u.roles = vec!["Bad".to_owned()];
        });
        let mut out = Vec::new();
        validate_fields(&fields, "requests[3].user", today(), &mut out);
        assert_eq!(paths(&out), ["requests[3].user.email", "requests[3].user.roles[0]"]);

        let mut out = Vec::new();
        validate_fields(&fields, "", today(), &mut out);
        assert_eq!(paths(&out), ["email", "roles[0]"]);
    }

    #[test]
    fn every_string_field_rejects_nul() {
        type Setter = fn(&mut UserFields, String);
        let setters: [(&str, Setter); 13] = [
            ("user.username", |u, s| u.username = s),
            ("user.email", |u, s| u.email = s),
            ("user.given_name", |u, s| u.given_name = s),
            ("user.family_name", |u, s| u.family_name = s),
            ("user.phone_number", |u, s| u.phone_number = s),
            ("user.national_id", |u, s| u.national_id = s),
            ("user.address", |u, s| u.address = s),
            ("user.birth_date", |u, s| u.birth_date = s),
            ("user.language_code", |u, s| u.language_code = s),
            ("user.region_code", |u, s| u.region_code = s),
            ("user.time_zone", |u, s| u.time_zone = s),
            ("user.image_uri", |u, s| u.image_uri = s),
            ("user.description", |u, s| u.description = s),
        ];
        for (path, set) in setters {
            let description = assert_one_violation(path, |u| set(u, "a\0b".to_owned()));
            assert_eq!(description, "must not contain NUL characters", "{path}");
        }
        let nul_paths = [
            (
                "user.labels[k]",
                user_with(|u| u.labels = BTreeMap::from([("k".to_owned(), "\0".to_owned())])),
            ),
            (
                "user.labels[k\\0]",
                user_with(|u| u.labels = BTreeMap::from([("k\0".to_owned(), "v".to_owned())])),
            ),
            ("user.roles[0]", user_with(|u| u.roles = vec!["a\0".to_owned()])),
            (
                "user.memberships[0].organization_id",
                user_with(|u| {
                    u.memberships = vec![Membership {
                        organization_id: "o\0".to_owned(),
                        ..Membership::default()
                    }]
                }),
            ),
            (
                "user.memberships[0].role",
                user_with(|u| {
                    u.memberships = vec![Membership {
                        organization_id: "o".to_owned(),
                        role: "r\0".to_owned(),
                        admin: false,
                    }];
                }),
            ),
        ];
        for (path, fields) in nul_paths {
            let found = violations(&fields);
            assert_eq!(paths(&found), [path]);
            assert!(
                found[0].description.contains("must not contain NUL characters"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn username() {
        assert_valid(|u| u.username = "abc".to_owned());
        assert_valid(|u| u.username = "a.b_c-9".to_owned());
        assert_valid(|u| u.username = "a".repeat(64));
        for bad in ["ab", "Abc", "ana maria", "ana@x", "ñandú", &"a".repeat(65)] {
            assert_one_violation("user.username", |u| u.username = bad.to_owned());
        }
    }

    #[test]
    fn email() {
        let good = [
            "a@b.co",
            "first.last@sub.example.com",
            "x!#$%&'*+/=?^_`{|}~-y@example-1.org",
            "user@123.example",
            &format!("{}@example.com", "a".repeat(64)),
        ];
        for email in good {
            assert_valid(|u| u.email = email.to_owned());
        }
        let bad = [
            "plain",
            "a@@b.co",
            "a@b@c.co",
            "@example.com",
            "a@",
            "a@localhost",
            ".a@b.co",
            "a.@b.co",
            "a..b@b.co",
            "\"quoted\"@b.co",
            "a b@b.co",
            " a@b.co",
            "a@b.co ",
            "a@-b.co",
            "a@b-.co",
            "a@b..co",
            "a@b.co.",
            "a@b.123",
            "a@b_c.co",
            "ñ@b.co",
            "a(b)@b.co",
            &format!("{}@example.com", "a".repeat(65)),
            &format!("a@{}.com", "b".repeat(64)),
            &format!("a@{}.com", vec!["b".repeat(60); 5].join(".")),
        ];
        for email in bad {
            let description = assert_one_violation("user.email", |u| u.email = email.to_owned());
            assert!(!description.contains(email), "echoes the value: {description}");
        }
        let too_long = format!(
            "{}@{}.{}.{}.com",
            "a".repeat(64),
            "b".repeat(61),
            "b".repeat(61),
            "b".repeat(62)
        );
        assert_eq!(too_long.len(), 255);
        let description = assert_one_violation("user.email", |u| u.email = too_long);
        assert_eq!(description, "must be at most 254 characters");
    }

    #[test]
    fn names_and_national_id() {
        assert_valid(|u| {
            u.given_name = "é".repeat(200);
            u.family_name = "O'Brien-Smith".to_owned();
            u.national_id = "9".repeat(64);
        });
        assert_one_violation("user.given_name", |u| u.given_name = "é".repeat(201));
        assert_one_violation("user.family_name", |u| u.family_name = "x".repeat(201));
        assert_one_violation("user.national_id", |u| u.national_id = "9".repeat(65));
        let description = assert_one_violation("user.given_name", |u| u.given_name = "Ana\nMaría".to_owned());
        assert_eq!(description, "must not contain control characters");
        assert_one_violation("user.family_name", |u| u.family_name = "a\tb".to_owned());
        assert_one_violation("user.national_id", |u| u.national_id = "1\u{7f}".to_owned());
    }

    #[test]
    fn address_and_description() {
        assert_valid(|u| {
            u.address = format!("{}\r\n\t", "a".repeat(497));
            u.description = "d".repeat(2000);
        });
        assert_one_violation("user.address", |u| u.address = "a".repeat(501));
        assert_one_violation("user.address", |u| u.address = "a\u{1b}[31m".to_owned());
        assert_one_violation("user.description", |u| u.description = "d".repeat(2001));
        assert_one_violation("user.description", |u| u.description = "bell\u{7}".to_owned());
    }

    #[test]
    fn phone_number() {
        for good in ["+12345678", "+573001234567", "+123456789012345"] {
            assert_valid(|u| u.phone_number = good.to_owned());
        }
        for bad in [
            "573001234567",
            "+1234567",
            "+1234567890123456",
            "+0123456789",
            "+57 300 123 4567",
            "+57-3001234567",
            "+",
            "++12345678",
            "+١٢٣٤٥٦٧٨٩",
        ] {
            let description = assert_one_violation("user.phone_number", |u| u.phone_number = bad.to_owned());
            assert_eq!(
                description,
                "must be an E.164 number: '+' then 8 to 15 digits, the first not 0"
            );
        }
    }

    #[test]
    fn birth_date() {
        for good in ["1990-01-31", "2024-02-29", "1850-01-01", "2024-06-15", "2024-06-16"] {
            assert_valid(|u| u.birth_date = good.to_owned());
        }
        let cases = [
            ("1990-1-31", "must be a date in the form YYYY-MM-DD"),
            ("31/01/1990", "must be a date in the form YYYY-MM-DD"),
            ("1990-01-31T00:00:00Z", "must be a date in the form YYYY-MM-DD"),
            ("+990-01-31", "must be a date in the form YYYY-MM-DD"),
            ("１９９０-01-31", "must be a date in the form YYYY-MM-DD"),
            ("2023-02-29", "is not a real calendar date"),
            ("2023-13-01", "is not a real calendar date"),
            ("2023-00-10", "is not a real calendar date"),
            ("2023-04-31", "is not a real calendar date"),
            ("1849-12-31", "must not be before 1850"),
            ("0000-01-01", "must not be before 1850"),
            ("2024-06-17", "must not be in the future"),
            ("9999-12-31", "must not be in the future"),
        ];
        for (bad, expected) in cases {
            let description = assert_one_violation("user.birth_date", |u| u.birth_date = bad.to_owned());
            assert_eq!(description, expected, "{bad}");
        }
        // No panic at the end of the calendar.
        let mut out = Vec::new();
        validate_fields(
            &user_with(|u| u.birth_date = "2024-01-01".to_owned()),
            "user",
            NaiveDate::MAX,
            &mut out,
        );
        assert_eq!(out, []);
    }

    #[test]
    fn language_code() {
        let good = [
            "es",
            "en",
            "es-CO",
            "zh-Hant-TW",
            "sr-Latn-RS",
            "de-CH-1901",
            "en-US-x-twain",
            "es-419",
            "english",
            "sl-rozaj-biske",
            "en-a-bbb-b-ccc-x-a-1",
            "de-DE-u-co-phonebk",
            "haw",
        ];
        for tag in good {
            assert_valid(|u| u.language_code = tag.to_owned());
        }
        let bad = [
            "e",
            "english-",
            "es_CO",
            "12",
            "es--CO",
            "-es",
            "es-CO-",
            "toolonglang",
            "es-C",
            "es-CO-x",
            "en-a",
            "en-a-x-y",
            "de-1901-1901",
            "en-a-bb-a-cc",
            "x-private",
            "es-ÇO",
            "es CO",
            "en-US-abcdefghi",
            "en-Latn-Latn",
            "i-klingon",
        ];
        for tag in bad {
            assert_one_violation("user.language_code", |u| u.language_code = tag.to_owned());
        }
        let long = "en-US-x-aaaaaaaa-bbbbbbbb-cccccccc-d";
        assert_eq!(long.len(), 36);
        let description = assert_one_violation("user.language_code", |u| u.language_code = long.to_owned());
        assert_eq!(description, "must be at most 35 characters");
    }

    #[test]
    fn region_code() {
        for good in ["CO", "US", "AD", "ZW", "SS", "BQ"] {
            assert_valid(|u| u.region_code = good.to_owned());
        }
        for bad in ["co", "XX", "UK", "EU", "COL", "C", "170", "AA", "ZZ"] {
            assert_one_violation("user.region_code", |u| u.region_code = bad.to_owned());
        }
    }

    #[test]
    fn region_table_is_sorted_and_unique() {
        assert!(ISO_3166_ALPHA_2.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_3166_ALPHA_2
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
    }

    #[test]
    fn time_zone() {
        for good in [
            "America/Bogota",
            "UTC",
            "Europe/Madrid",
            "Asia/Kolkata",
            "America/Argentina/Buenos_Aires",
        ] {
            assert_valid(|u| u.time_zone = good.to_owned());
        }
        for bad in [
            "america/bogota",
            "Mars/Olympus",
            "GMT+5:30",
            "Bogota",
            "America/Bogota ",
            "-05:00",
        ] {
            assert_one_violation("user.time_zone", |u| u.time_zone = bad.to_owned());
        }
    }

    #[test]
    fn image_uri() {
        let long_ok = format!("https://example.com/{}", "a".repeat(2048 - 20));
        assert_eq!(long_ok.chars().count(), 2048);
        for good in [
            "https://cdn.example.com/a.png",
            "http://127.0.0.1:8080/x?y=1#z",
            "HTTPS://EXAMPLE.COM",
            &long_ok,
        ] {
            assert_valid(|u| u.image_uri = good.to_owned());
        }
        let cases = [
            ("/relative/a.png", "must be an absolute http or https URL"),
            ("example.com/a.png", "must be an absolute http or https URL"),
            ("http://", "must be an absolute http or https URL"),
            ("ftp://example.com/a.png", "must use the http or https scheme"),
            ("data:image/png;base64,AAAA", "must use the http or https scheme"),
            ("javascript:alert(1)", "must use the http or https scheme"),
            (
                " https://example.com/a.png",
                "must not contain whitespace or control characters",
            ),
            (
                "https://example.com/a b.png",
                "must not contain whitespace or control characters",
            ),
            (
                "https://exa\tmple.com/",
                "must not contain whitespace or control characters",
            ),
            (&format!("{long_ok}a"), "must be at most 2048 characters"),
        ];
        for (bad, expected) in cases {
            let description = assert_one_violation("user.image_uri", |u| u.image_uri = bad.to_owned());
            assert_eq!(description, expected, "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert_valid(|u| {
            u.labels = BTreeMap::from([
                ("a".to_owned(), "v".repeat(256)),
                ("k".repeat(63), "ü".repeat(256)),
                ("0_-z".to_owned(), String::new()),
            ]);
        });
        for bad_key in ["", "Team", "team name", "é", "a.b", &"k".repeat(64)] {
            let description = assert_one_violation(&format!("user.labels[{bad_key}]"), |u| {
                u.labels = BTreeMap::from([(bad_key.to_owned(), "v".to_owned())]);
            });
            assert_eq!(description, "key must be 1 to 63 characters of a-z, 0-9, '_' or '-'");
        }
        let description = assert_one_violation("user.labels[team]", |u| {
            u.labels = BTreeMap::from([("team".to_owned(), "v".repeat(257))]);
        });
        assert_eq!(description, "value must be at most 256 characters");

        // A bad key with a bad value breaks two rules on the same entry.
        let found = violations(&user_with(|u| {
            u.labels = BTreeMap::from([("A".to_owned(), "v".repeat(257))])
        }));
        assert_eq!(paths(&found), ["user.labels[A]", "user.labels[A]"]);
    }

    #[test]
    fn long_label_keys_are_cut_in_the_path() {
        let key = "K".repeat(81);
        let expected = format!("user.labels[{}…]", "K".repeat(80));
        assert_one_violation(&expected, |u| u.labels = BTreeMap::from([(key, "v".to_owned())]));

        let key = "K".repeat(80);
        let expected = format!("user.labels[{key}]");
        assert_one_violation(&expected, |u| {
            u.labels = BTreeMap::from([(key.clone(), "v".to_owned())])
        });
    }

    #[test]
    fn label_count() {
        let labels = |n: usize| {
            (0..n)
                .map(|i| (format!("k{i}"), "v".to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_valid(|u| u.labels = labels(MAX_LABELS));
        let description = assert_one_violation("user.labels", |u| u.labels = labels(MAX_LABELS + 1));
        assert_eq!(description, "must have at most 64 entries");
    }

    #[test]
    fn is_label_key_and_is_role() {
        assert!(is_label_key("a"));
        assert!(is_label_key(&"z".repeat(63)));
        assert!(is_label_key("0-_9"));
        assert!(!is_label_key(""));
        assert!(!is_label_key(&"z".repeat(64)));
        assert!(!is_label_key("a.b"));
        assert!(!is_label_key("A"));

        assert!(is_role("a"));
        assert!(is_role("billing.invoices:read_all-2"));
        assert!(is_role(&"r".repeat(64)));
        assert!(!is_role(""));
        assert!(!is_role(&"r".repeat(65)));
        assert!(!is_role("Admin"));
        assert!(!is_role("a b"));
        assert!(!is_role("a/b"));
    }

    #[test]
    fn roles() {
        assert_valid(|u| u.roles = vec!["admin".to_owned(), "org:reader".to_owned(), "r".repeat(64)]);
        for bad in ["", "Admin", "a b", "a/b", "rôle", &"r".repeat(65)] {
            let description =
                assert_one_violation("user.roles[1]", |u| u.roles = vec!["ok".to_owned(), bad.to_owned()]);
            assert_eq!(
                description,
                "must be 1 to 64 characters of a-z, 0-9, '_', '.', ':' or '-'"
            );
        }
        let found = violations(&user_with(|u| {
            u.roles = ["a", "b", "a", "c", "b", "a"].map(str::to_owned).to_vec();
        }));
        assert_eq!(paths(&found), ["user.roles[2]", "user.roles[4]", "user.roles[5]"]);
        let descriptions: Vec<&str> = found.iter().map(|v| v.description.as_str()).collect();
        assert_eq!(
            descriptions,
            ["duplicates roles[0]", "duplicates roles[1]", "duplicates roles[0]"]
        );
    }

    #[test]
    fn role_count() {
        let roles = |n: usize| (0..n).map(|i| format!("role{i}")).collect::<Vec<_>>();
        assert_valid(|u| u.roles = roles(MAX_ROLES));
        let description = assert_one_violation("user.roles", |u| u.roles = roles(MAX_ROLES + 1));
        assert_eq!(description, "must have at most 100 entries");
        // Entries past the limit are not examined, so a huge list yields a bounded number of violations.
        let found = violations(&user_with(|u| u.roles = vec!["BAD".to_owned(); 10_000]));
        assert_eq!(found.len(), 1 + MAX_ROLES);
    }

    fn membership(organization_id: &str, role: &str) -> Membership {
        Membership {
            organization_id: organization_id.to_owned(),
            role: role.to_owned(),
            admin: false,
        }
    }

    #[test]
    fn memberships() {
        assert_valid(|u| u.memberships = vec![membership("org-1", "owner"), membership(&"o".repeat(128), "")]);
        let cases = [
            ("", "is required"),
            (&*"o".repeat(129), "must be at most 128 characters"),
            ("org\n1", "must not contain control characters"),
        ];
        for (organization_id, expected) in cases {
            let description = assert_one_violation("user.memberships[0].organization_id", |u| {
                u.memberships = vec![membership(organization_id, "")];
            });
            assert_eq!(description, expected);
        }
        let description = assert_one_violation("user.memberships[2].organization_id", |u| {
            u.memberships = vec![membership("a", ""), membership("b", ""), membership("a", "viewer")];
        });
        assert_eq!(description, "duplicates memberships[0].organization_id");
        // Organization ids are opaque: case matters.
        assert_valid(|u| u.memberships = vec![membership("a", ""), membership("A", "")]);

        for bad_role in ["Owner", "a b", &"r".repeat(65)] {
            assert_one_violation("user.memberships[1].role", |u| {
                u.memberships = vec![membership("a", "ok"), membership("b", bad_role)];
            });
        }
    }

    #[test]
    fn membership_count() {
        let memberships = |n: usize| (0..n).map(|i| membership(&format!("org-{i}"), "")).collect::<Vec<_>>();
        assert_valid(|u| u.memberships = memberships(MAX_MEMBERSHIPS));
        let description =
            assert_one_violation("user.memberships", |u| u.memberships = memberships(MAX_MEMBERSHIPS + 1));
        assert_eq!(description, "must have at most 100 entries");
    }

    /// `{"k": {"k": ... {"k": 1}}}` with `depth` objects in all.
    fn nested_objects(depth: usize) -> Map<String, Value> {
        // Built by hand: `json!` serializes an interpolated value, which would recurse through it.
        let mut map = Map::from_iter([("k".to_owned(), json!(1))]);
        for _ in 1..depth {
            map = Map::from_iter([("k".to_owned(), Value::Object(map))]);
        }
        map
    }

    /// Takes apart what `nested_objects` built one level at a time, because dropping it whole would recurse
    /// once per level and overflow the test thread's stack.
    fn drop_nested_objects(mut next: Option<Map<String, Value>>) {
        while let Some(mut map) = next {
            next = match map.remove("k") {
                Some(Value::Object(inner)) => Some(inner),
                _ => None,
            };
        }
    }

    #[test]
    fn attributes_depth() {
        assert_valid(|u| u.attributes = Some(nested_objects(MAX_ATTRIBUTES_DEPTH)));
        let description = assert_one_violation("user.attributes", |u| {
            u.attributes = Some(nested_objects(MAX_ATTRIBUTES_DEPTH + 1))
        });
        assert!(
            description.starts_with(&format!("must be nested at most {MAX_ATTRIBUTES_DEPTH} levels deep")),
            "{description}"
        );

        // Arrays count as levels too: the top object is 1, each array one more.
        let mut value = json!("leaf");
        for _ in 0..MAX_ATTRIBUTES_DEPTH - 1 {
            value = Value::Array(vec![value]);
        }
        let ok = Map::from_iter([("a".to_owned(), value.clone())]);
        assert_valid(|u| u.attributes = Some(ok));
        let too_deep = Map::from_iter([("a".to_owned(), Value::Array(vec![value]))]);
        let description = assert_one_violation("user.attributes", |u| u.attributes = Some(too_deep));
        // The description names where the nesting went too deep.
        let shown_path = format!("a{}", "[0]".repeat(MAX_ATTRIBUTES_DEPTH - 1));
        assert!(
            description.contains(&format!("too deep at {shown_path}")),
            "{description}"
        );

        // Far deeper than any encoder's recursion limit: reported without recursing or serializing.
        let mut fields = user_with(|u| u.attributes = Some(nested_objects(100_000)));
        assert_eq!(paths(&violations(&fields)), ["user.attributes"]);
        drop_nested_objects(fields.attributes.take());
    }

    #[test]
    fn attributes_size() {
        let sized = |bytes: usize| {
            // {"s":"..."} is 8 bytes of framing around the string.
            json!({ "s": "x".repeat(bytes - 8) }).as_object().cloned()
        };
        let fits = sized(MAX_ATTRIBUTES_BYTES);
        let encoded = serde_json::to_vec(&fits).expect("encodes");
        assert_eq!(encoded.len(), MAX_ATTRIBUTES_BYTES);
        assert_valid(|u| u.attributes = fits);
        let description = assert_one_violation("user.attributes", |u| u.attributes = sized(MAX_ATTRIBUTES_BYTES + 1));
        assert_eq!(description, "must be at most 16384 bytes when encoded as JSON");
        assert_valid(|u| u.attributes = Some(Map::new()));
    }

    #[test]
    fn attributes_nul() {
        let description = assert_one_violation("user.attributes", |u| {
            u.attributes = json!({"a": {"b": ["ok", "bad\u{0}"]}}).as_object().cloned();
        });
        assert_eq!(description, "must not contain NUL characters (found at a.b[1])");
        let description = assert_one_violation("user.attributes", |u| {
            u.attributes = json!({"a": {"k\u{0}": 1}}).as_object().cloned();
        });
        assert_eq!(description, "must not contain NUL characters (found at a.k\\0)");
    }

    #[test]
    fn validity_period() {
        let at = |year: i32| Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).single().expect("valid time");
        assert_valid(|u| {
            u.valid_from = Some(at(2024));
            u.expire_time = Some(at(2025));
        });
        assert_valid(|u| u.valid_from = Some(at(2030)));
        assert_valid(|u| u.expire_time = Some(at(2000)));
        for (from, expire) in [(2025, 2024), (2024, 2024)] {
            let description = assert_one_violation("user.expire_time", |u| {
                u.valid_from = Some(at(from));
                u.expire_time = Some(at(expire));
            });
            assert_eq!(description, "must be after valid_from");
        }
        assert_one_violation("user.valid_from", |u| u.valid_from = Some(at(10_000)));
        assert_one_violation("user.expire_time", |u| u.expire_time = Some(at(0)));
    }

    #[test]
    fn many_bad_fields_are_reported_at_once() {
        let fields = UserFields {
            username: "x".to_owned(),
            email: "not-an-email".to_owned(),
            given_name: "a\u{0}".to_owned(),
            family_name: "f".repeat(201),
            phone_number: "3001234567".to_owned(),
            national_id: "id\n".to_owned(),
            address: "a".repeat(501),
            birth_date: "2023-02-29".to_owned(),
            language_code: "es_CO".to_owned(),
            region_code: "XX".to_owned(),
            time_zone: "Mars/Base".to_owned(),
            image_uri: "ftp://example.com".to_owned(),
            description: "\u{7}".to_owned(),
            labels: BTreeMap::from([("Bad".to_owned(), "v".to_owned())]),
            roles: vec!["r".to_owned(), "r".to_owned()],
            memberships: vec![membership("", "BAD")],
            attributes: Some(nested_objects(40)),
            valid_from: Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("valid time")),
            expire_time: Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("valid time")),
        };
        let found = violations(&fields);
        assert_eq!(
            paths(&found),
            [
                "user.username",
                "user.email",
                "user.given_name",
                "user.family_name",
                "user.phone_number",
                "user.national_id",
                "user.address",
                "user.birth_date",
                "user.language_code",
                "user.region_code",
                "user.time_zone",
                "user.image_uri",
                "user.description",
                "user.labels[Bad]",
                "user.roles[1]",
                "user.memberships[0].organization_id",
                "user.memberships[0].role",
                "user.attributes",
                "user.expire_time",
            ]
        );
    }

    #[test]
    fn normalize_brings_values_to_stored_form() {
        let mut fields = user_with(|u| {
            u.username = "Ana.Maria".to_owned();
            u.region_code = "co".to_owned();
            u.language_code = "ES-co".to_owned();
            u.email = "Ana@Example.COM".to_owned();
        });
        normalize(&mut fields);
        assert_eq!(fields.username, "ana.maria");
        assert_eq!(fields.region_code, "CO");
        assert_eq!(fields.language_code, "es-CO");
        assert_eq!(fields.email, "Ana@Example.COM", "email is not normalized");
        assert_eq!(violations(&fields), []);
    }

    #[test]
    fn normalize_language_tags() {
        let cases = [
            ("ES-co", "es-CO"),
            ("es", "es"),
            ("ZH-hant-tw", "zh-Hant-TW"),
            ("sr-LATN-rs", "sr-Latn-RS"),
            ("DE-ch-1901", "de-CH-1901"),
            ("EN-us-X-TWAIN", "en-US-x-twain"),
            ("es-419", "es-419"),
            ("de-DE-U-CO-PHONEBK", "de-DE-u-co-phonebk"),
            // Subtags after a singleton keep lower case even when they look like a script or region.
            ("en-A-LATN-X-US", "en-a-latn-x-us"),
        ];
        for (input, expected) in cases {
            let mut fields = user_with(|u| u.language_code = input.to_owned());
            normalize(&mut fields);
            assert_eq!(fields.language_code, expected, "{input}");
        }
    }

    #[test]
    fn normalize_leaves_what_it_cannot_interpret() {
        let mut fields = user_with(|u| {
            u.username = " Ana\u{212a} ".to_owned();
            u.language_code = "ES_co".to_owned();
            u.region_code = " co".to_owned();
        });
        normalize(&mut fields);
        assert_eq!(fields.username, " ana\u{212a} ", "not trimmed, non-ASCII untouched");
        assert_eq!(fields.language_code, "ES_co");
        assert_eq!(fields.region_code, " CO");
        assert_eq!(
            paths(&violations(&fields)),
            ["user.username", "user.language_code", "user.region_code"]
        );
    }

    #[test]
    fn password_policy() {
        assert_eq!(password_violations("Secr3t!pass"), Vec::<String>::new());
        assert_eq!(password_violations("Contraseña 9 ñ!"), Vec::<String>::new());
        assert_eq!(
            password_violations(&format!("Aa1!{}", "x".repeat(252))),
            Vec::<String>::new()
        );

        assert_eq!(password_violations("Aa1!aaa"), ["must be at least 8 characters"]);
        assert_eq!(
            password_violations(&format!("Aa1!{}", "x".repeat(253))),
            ["must be at most 256 characters"]
        );
        assert_eq!(password_violations("password1!"), ["must contain an upper-case letter"]);
        assert_eq!(password_violations("PASSWORD1!"), ["must contain a lower-case letter"]);
        assert_eq!(password_violations("Password!!"), ["must contain a digit"]);
        assert_eq!(password_violations("Password12"), ["must contain a symbol"]);
        assert_eq!(
            password_violations("password"),
            ["must contain an upper-case letter, a digit and a symbol"]
        );
        assert_eq!(
            password_violations(""),
            [
                "must be at least 8 characters",
                "must contain an upper-case letter, a lower-case letter, a digit and a symbol"
            ]
        );
        // Whitespace is not a symbol.
        assert_eq!(password_violations("Pass word 1"), ["must contain a symbol"]);
        assert_eq!(
            password_violations("Secr3t!pass\u{0}"),
            ["must not contain control characters"]
        );
        assert_eq!(
            password_violations("Secr3t!pass\n"),
            ["must not contain control characters"]
        );
    }

    #[test]
    fn password_is_never_echoed() {
        for password in ["hunter2", "ALLUPPERCASEBUTLONG", "x\u{0}y", &"p".repeat(300)] {
            let mut out = Vec::new();
            validate_password(password, "user.password", &mut out);
            assert!(!out.is_empty());
            assert!(out.iter().all(|v| !v.description.contains(password)));
        }
    }

    #[test]
    fn english_lists() {
        assert_eq!(english_list(&[]), "");
        assert_eq!(english_list(&["a"]), "a");
        assert_eq!(english_list(&["a", "b"]), "a and b");
        assert_eq!(english_list(&["a", "b", "c"]), "a, b and c");
    }
}
