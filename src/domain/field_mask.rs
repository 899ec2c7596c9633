//! Update masks over `User`: parsing and printing AIP-161 paths, and merging a partial user into a stored one.

use std::fmt;

use super::error::FieldViolation;
pub use super::field_table::UserField;
use super::field_table::{OUTPUT_ONLY_FIELDS, PRECONDITION_FIELD, Shape};
use super::user::UserFields;

/// Most paths one mask may hold; a longer mask is refused before any work is done on it.
pub const MAX_MASK_PATHS: usize = 1000;
/// Longest single path, in bytes.
pub const MAX_PATH_BYTES: usize = 512;

impl UserField {
    /// Finds a field by its proto name or its lowerCamelCase JSON name (REST masks may use either).
    pub fn from_name(name: &str) -> Option<UserField> {
        UserField::ALL
            .into_iter()
            .find(|f| f.name() == name || snake_to_lower_camel(f.name()) == name)
    }
}

/// Whether a mask path names a field the service maintains, in either spelling.
fn is_output_only(name: &str) -> bool {
    OUTPUT_ONLY_FIELDS
        .iter()
        .chain([&PRECONDITION_FIELD])
        .any(|f| *f == name || snake_to_lower_camel(f) == name)
}

pub fn snake_to_lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// One path of a parsed mask.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MaskPath {
    /// The whole field.
    Field(UserField),
    /// One key of `labels`.
    LabelKey(String),
    /// One top-level key of `attributes`.
    AttributeKey(String),
}

impl MaskPath {
    /// The field this path writes to.
    pub fn field(&self) -> UserField {
        match self {
            MaskPath::Field(f) => *f,
            MaskPath::LabelKey(_) => UserField::Labels,
            MaskPath::AttributeKey(_) => UserField::Attributes,
        }
    }
}

impl fmt::Display for MaskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskPath::Field(field) => f.write_str(field.name()),
            MaskPath::LabelKey(key) => write!(f, "labels.{}", quote_segment(key)),
            MaskPath::AttributeKey(key) => write!(f, "attributes.{}", quote_segment(key)),
        }
    }
}

/// Writes a map key as a path segment: bare when it is a plain identifier, else in backticks with inner
/// backticks doubled (AIP-161).
pub fn quote_segment(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        key.to_owned()
    } else {
        format!("`{}`", key.replace('`', "``"))
    }
}

/// A parsed update mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateMask {
    /// `*`: every writable field is replaced; `password` only when one is sent.
    Full,
    /// Exactly these paths (deduplicated, output-only paths dropped).
    Paths(Vec<MaskPath>),
}

impl UpdateMask {
    /// Parses the paths of a `FieldMask`, reporting every bad path at once as violations on `field`.
    pub fn parse<S: AsRef<str>>(paths: &[S], field: &str) -> Result<UpdateMask, Vec<FieldViolation>> {
        if paths.len() > MAX_MASK_PATHS {
            return Err(vec![FieldViolation::new(
                field,
                format!("has {} paths; at most {MAX_MASK_PATHS} are allowed", paths.len()),
            )]);
        }
        let mut violations = Vec::new();
        let mut parsed: Vec<MaskPath> = Vec::new();
        let mut full = false;
        for raw in paths {
            let raw = raw.as_ref();
            if raw == "*" {
                full = true;
                continue;
            }
            match parse_path(raw) {
                Ok(Some(path)) => {
                    if !parsed.contains(&path) {
                        parsed.push(path);
                    }
                }
                Ok(None) => {}
                Err(description) => violations.push(FieldViolation::new(field, description)),
            }
        }
        if full && paths.len() > 1 {
            violations.push(FieldViolation::new(
                field,
                "`*` replaces every field and must be the only path",
            ));
        }
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(if full {
            UpdateMask::Full
        } else {
            UpdateMask::Paths(parsed)
        })
    }

    /// The mask of a request that names none: every populated (non-default) field of `user`, plus `password`
    /// when one is sent.
    pub fn populated(user: &UserFields, password_sent: bool) -> UpdateMask {
        let paths = UserField::ALL
            .into_iter()
            .filter(|&f| {
                if f == UserField::Password {
                    password_sent
                } else {
                    !user.is_unset(f)
                }
            })
            .map(MaskPath::Field)
            .collect();
        UpdateMask::Paths(paths)
    }

    /// The fields this mask may write, for permission checks; `Full` writes every field but `password` when
    /// none is sent.
    pub fn fields(&self, password_sent: bool) -> Vec<UserField> {
        let mut fields: Vec<UserField> = match self {
            UpdateMask::Full => UserField::ALL
                .into_iter()
                .filter(|&f| f != UserField::Password || password_sent)
                .collect(),
            UpdateMask::Paths(paths) => paths.iter().map(MaskPath::field).collect(),
        };
        fields.sort();
        fields.dedup();
        fields
    }

    /// Whether this mask writes the password.
    pub fn writes_password(&self, password_sent: bool) -> bool {
        match self {
            UpdateMask::Full => password_sent,
            UpdateMask::Paths(paths) => paths.contains(&MaskPath::Field(UserField::Password)),
        }
    }

    /// Copies the masked values of `source` into `target`. Fields listed but empty in `source` are cleared;
    /// map-key paths set or delete that one key. `password` is not part of `UserFields` and is handled by the
    /// caller through [`UpdateMask::writes_password`].
    pub fn apply(&self, target: &mut UserFields, source: &UserFields) {
        match self {
            UpdateMask::Full => *target = source.clone(),
            UpdateMask::Paths(paths) => {
                for path in paths {
                    apply_path(path, target, source);
                }
            }
        }
    }
}

impl fmt::Display for UpdateMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateMask::Full => f.write_str("*"),
            UpdateMask::Paths(paths) => {
                for (i, p) in paths.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

fn apply_path(path: &MaskPath, target: &mut UserFields, source: &UserFields) {
    match path {
        MaskPath::LabelKey(key) => match source.labels.get(key) {
            Some(value) => {
                target.labels.insert(key.clone(), value.clone());
            }
            None => {
                target.labels.remove(key);
            }
        },
        MaskPath::AttributeKey(key) => match source.attributes.as_ref().and_then(|a| a.get(key)) {
            Some(value) => {
                target
                    .attributes
                    .get_or_insert_with(Default::default)
                    .insert(key.clone(), value.clone());
            }
            None => {
                if let Some(attributes) = target.attributes.as_mut() {
                    attributes.remove(key);
                }
            }
        },
        MaskPath::Field(field) => target.copy_field(*field, source),
    }
}

/// Splits a path into segments at dots outside backticks, unquoting backticked segments.
pub fn split_segments(path: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    let mut chars = path.chars().peekable();
    loop {
        let mut segment = String::new();
        if chars.peek() == Some(&'`') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '`' {
                    if chars.peek() == Some(&'`') {
                        chars.next();
                        segment.push('`');
                    } else {
                        closed = true;
                        break;
                    }
                } else {
                    segment.push(c);
                }
            }
            if !closed {
                return Err(format!("path `{}` has an unterminated backtick", shorten(path)));
            }
            if segment.is_empty() {
                return Err(format!("path `{}` has an empty segment", shorten(path)));
            }
            match chars.next() {
                None => {
                    segments.push(segment);
                    return Ok(segments);
                }
                Some('.') => segments.push(segment),
                Some(_) => {
                    return Err(format!(
                        "path `{}` continues after a closing backtick without a dot",
                        shorten(path)
                    ));
                }
            }
        } else {
            let mut ended = true;
            for c in chars.by_ref() {
                match c {
                    '.' => {
                        ended = false;
                        break;
                    }
                    '`' => {
                        return Err(format!(
                            "path `{}` has a backtick inside a segment; quote the whole segment",
                            shorten(path)
                        ));
                    }
                    c if c.is_whitespace() || c.is_control() => {
                        return Err(format!(
                            "path `{}` has white space or a control character outside backticks",
                            shorten(path)
                        ));
                    }
                    c => segment.push(c),
                }
            }
            if segment.is_empty() {
                return Err(format!("path `{}` has an empty segment", shorten(path)));
            }
            segments.push(segment);
            if ended {
                return Ok(segments);
            }
        }
    }
}

/// Parses one path; `Ok(None)` for an output-only path, which is ignored.
fn parse_path(raw: &str) -> Result<Option<MaskPath>, String> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("a path is longer than {MAX_PATH_BYTES} bytes"));
    }
    if raw.is_empty() {
        return Err("empty path".to_owned());
    }
    let segments = split_segments(raw)?;
    let (head, rest) = match segments.split_first() {
        Some(split) => split,
        None => return Err("empty path".to_owned()),
    };
    if is_output_only(head) {
        return if rest.is_empty() {
            Ok(None)
        } else {
            Err(format!("`{head}` has no sub-fields that can be written"))
        };
    }
    let Some(field) = UserField::from_name(head) else {
        return Err(format!("unknown field `{}` in path `{}`", shorten(head), shorten(raw)));
    };
    match (rest, field.shape()) {
        ([], _) => Ok(Some(MaskPath::Field(field))),
        ([key], Shape::Map) => {
            let path = if field == UserField::Labels {
                MaskPath::LabelKey(key.clone())
            } else {
                MaskPath::AttributeKey(key.clone())
            };
            // A key that is not a plain identifier prints in backticks, so the printed path can be longer than
            // the one sent. Printed masks are parsed again (revisions record them and callers send them back),
            // so the limit holds for the printed form too.
            let printed = path.to_string().len();
            if printed > MAX_PATH_BYTES {
                return Err(format!(
                    "path `{}` is {printed} bytes long once its key is quoted; at most {MAX_PATH_BYTES} are allowed",
                    shorten(raw)
                ));
            }
            Ok(Some(path))
        }
        (_, Shape::Map) => Err(format!(
            "path `{}` goes below a key of `{}`; only `{}.<key>` is supported (quote keys with dots in backticks)",
            shorten(raw),
            field.name(),
            field.name()
        )),
        (_, Shape::Repeated) => Err(format!(
            "path `{}` addresses inside the repeated field `{}`, which is replaced whole; use `{}`",
            shorten(raw),
            field.name(),
            field.name()
        )),
        (_, Shape::Message) => Err(format!(
            "path `{}` goes inside `{}`, which is set as a whole; use `{}`",
            shorten(raw),
            field.name(),
            field.name()
        )),
        (_, Shape::Scalar) => Err(format!(
            "`{}` is a scalar field and has no sub-fields (path `{}`)",
            field.name(),
            shorten(raw)
        )),
    }
}

/// Cuts client-provided text to a readable length for error messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn parse(paths: &[&str]) -> Result<UpdateMask, Vec<FieldViolation>> {
        UpdateMask::parse(paths, "update_mask")
    }

    fn paths(mask: UpdateMask) -> Vec<MaskPath> {
        match mask {
            UpdateMask::Paths(p) => p,
            UpdateMask::Full => panic!("expected paths, got *"),
        }
    }

    #[test]
    fn parses_fields_in_both_spellings() {
        let mask = parse(&["given_name", "familyName", "labels"]).expect("valid mask");
        assert_eq!(
            paths(mask),
            vec![
                MaskPath::Field(UserField::GivenName),
                MaskPath::Field(UserField::FamilyName),
                MaskPath::Field(UserField::Labels),
            ]
        );
    }

    #[test]
    fn parses_map_keys_plain_and_backticked() {
        let mask = parse(&["labels.team", "labels.`a.b`", "attributes.`x``y`", "labels.team-a"]).expect("valid mask");
        assert_eq!(
            paths(mask),
            vec![
                MaskPath::LabelKey("team".into()),
                MaskPath::LabelKey("a.b".into()),
                MaskPath::AttributeKey("x`y".into()),
                MaskPath::LabelKey("team-a".into()),
            ]
        );
    }

    #[test]
    fn star_is_full_and_must_be_alone() {
        assert_eq!(parse(&["*"]).expect("valid"), UpdateMask::Full);
        let err = parse(&["*", "email"]).expect_err("mixed star");
        assert_eq!(err[0].field, "update_mask");
    }

    #[test]
    fn output_only_paths_are_ignored() {
        let mask = parse(&["id", "state", "etag", "createTime", "email"]).expect("valid");
        assert_eq!(paths(mask), vec![MaskPath::Field(UserField::Email)]);
    }

    #[test]
    fn rejects_unknown_index_and_sub_paths_all_at_once() {
        let err = parse(&[
            "nope",
            "roles.0",
            "given_name.first",
            "labels.a.b",
            "valid_from.seconds",
            "memberships.role",
        ])
        .expect_err("all invalid");
        assert_eq!(err.len(), 6);
        assert!(err.iter().all(|v| v.field == "update_mask"));
        assert!(err[0].description.contains("unknown field `nope`"));
        assert!(err[1].description.contains("replaced whole"));
    }

    #[test]
    fn rejects_malformed_quoting() {
        for bad in [
            "labels.`open",
            "labels.``",
            "labels.`a`b",
            "labels.a`b",
            "",
            "labels.",
            ".email",
            "a b",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_too_many_paths() {
        let many: Vec<String> = (0..=MAX_MASK_PATHS).map(|i| format!("labels.k{i}")).collect();
        let err = UpdateMask::parse(&many, "update_mask").expect_err("too long");
        assert!(err[0].description.contains("at most"));
    }

    /// Found with the `field_mask` fuzz target's print-and-reparse check: `labels.-` and 504 `k` (512 bytes) was
    /// accepted, but its key is not an identifier, so it printed in backticks as 514 bytes, which did not parse.
    #[test]
    fn accepted_paths_print_within_the_length_limit() {
        let needs_quotes = format!("labels.-{}", "k".repeat(MAX_PATH_BYTES - "labels.-".len()));
        assert_eq!(needs_quotes.len(), MAX_PATH_BYTES);
        let err = parse(&[needs_quotes.as_str()]).expect_err("too long once quoted");
        assert!(
            err[0].description.contains("514 bytes long once its key is quoted"),
            "{err:?}"
        );

        let fits = format!("attributes.-{}", "k".repeat(MAX_PATH_BYTES - "attributes.`-`".len()));
        let mask = parse(&[fits.as_str()]).expect("fits once quoted");
        let printed: Vec<String> = paths(mask.clone()).iter().map(ToString::to_string).collect();
        assert_eq!(printed[0].len(), MAX_PATH_BYTES);
        assert_eq!(
            UpdateMask::parse(&printed, "update_mask").expect("printed path parses"),
            mask
        );

        let plain = format!("labels.{}", "k".repeat(MAX_PATH_BYTES - "labels.".len()));
        assert!(parse(&[plain.as_str()]).is_ok(), "a plain key needs no quotes");
    }

    #[test]
    fn duplicates_collapse() {
        let mask = parse(&["email", "email", "labels.a", "labels.a"]).expect("valid");
        assert_eq!(paths(mask).len(), 2);
    }

    fn sample() -> UserFields {
        UserFields {
            email: "a@example.com".into(),
            given_name: "Ann".into(),
            description: "old".into(),
            labels: BTreeMap::from([("team".into(), "core".into()), ("x".into(), "1".into())]),
            roles: vec!["admin".into(), "dev".into()],
            ..Default::default()
        }
    }

    #[test]
    fn explicit_mask_sets_and_clears_only_listed_fields() {
        let mut target = sample();
        let source = UserFields {
            given_name: "Bea".into(),
            family_name: "ignored".into(),
            ..Default::default()
        };
        parse(&["given_name", "description"])
            .expect("valid")
            .apply(&mut target, &source);
        assert_eq!(target.given_name, "Bea");
        assert_eq!(target.description, "", "listed but empty clears");
        assert_eq!(target.family_name, "", "unlisted stays as it was");
        assert_eq!(target.email, "a@example.com");
    }

    #[test]
    fn map_key_paths_set_and_delete_single_keys() {
        let mut target = sample();
        let source = UserFields {
            labels: BTreeMap::from([("new".into(), "v".into())]),
            ..Default::default()
        };
        parse(&["labels.new", "labels.x"])
            .expect("valid")
            .apply(&mut target, &source);
        assert_eq!(
            target.labels,
            BTreeMap::from([("new".into(), "v".into()), ("team".into(), "core".into())])
        );
    }

    #[test]
    fn attribute_key_paths_set_and_delete() {
        let mut target = sample();
        let source = UserFields {
            attributes: serde_json::json!({"score": 7}).as_object().cloned(),
            ..Default::default()
        };
        parse(&["attributes.score", "attributes.gone"])
            .expect("valid")
            .apply(&mut target, &source);
        assert_eq!(target.attributes, source.attributes);
    }

    #[test]
    fn repeated_fields_are_replaced_whole() {
        let mut target = sample();
        let source = UserFields {
            roles: vec!["viewer".into()],
            ..Default::default()
        };
        parse(&["roles"]).expect("valid").apply(&mut target, &source);
        assert_eq!(target.roles, vec!["viewer".to_owned()]);
    }

    #[test]
    fn full_mask_replaces_everything() {
        let mut target = sample();
        let source = UserFields {
            email: "b@example.com".into(),
            ..Default::default()
        };
        UpdateMask::Full.apply(&mut target, &source);
        assert_eq!(target, source);
    }

    #[test]
    fn populated_mask_lists_non_default_fields() {
        let mask = UpdateMask::populated(&sample(), true);
        assert_eq!(
            paths(mask),
            vec![
                MaskPath::Field(UserField::Email),
                MaskPath::Field(UserField::GivenName),
                MaskPath::Field(UserField::Description),
                MaskPath::Field(UserField::Labels),
                MaskPath::Field(UserField::Roles),
                MaskPath::Field(UserField::Password),
            ]
        );
    }

    #[test]
    fn fields_reports_privileged_writes() {
        let mask = parse(&["labels.a", "roles", "valid_from"]).expect("valid");
        let privileged: Vec<UserField> = mask.fields(false).into_iter().filter(|f| f.is_privileged()).collect();
        assert_eq!(privileged, vec![UserField::Roles, UserField::ValidFrom]);
        assert!(UpdateMask::Full.fields(false).contains(&UserField::Roles));
        assert!(!UpdateMask::Full.fields(false).contains(&UserField::Password));
    }

    fn arb_path() -> impl Strategy<Value = MaskPath> {
        let field = proptest::sample::select(UserField::ALL.to_vec()).prop_map(MaskPath::Field);
        let key = "\\PC{1,12}";
        prop_oneof![
            field,
            key.prop_map(MaskPath::LabelKey),
            key.prop_map(MaskPath::AttributeKey),
        ]
    }

    proptest! {
        #[test]
        fn parse_print_parse_is_identity(paths in proptest::collection::vec(arb_path(), 1..8)) {
            let mut unique: Vec<MaskPath> = Vec::new();
            for p in paths {
                if !unique.contains(&p) {
                    unique.push(p);
                }
            }
            let mask = UpdateMask::Paths(unique);
            let printed: Vec<String> = match &mask {
                UpdateMask::Paths(p) => p.iter().map(ToString::to_string).collect(),
                UpdateMask::Full => unreachable!(),
            };
            let reparsed = UpdateMask::parse(&printed, "update_mask").expect("printed paths parse");
            prop_assert_eq!(reparsed, mask);
        }

        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(".{0,40}", 0..5)) {
            let _ = UpdateMask::parse(&raw, "update_mask");
        }

        #[test]
        fn parse_never_panics_on_path_like_strings(raw in "[a-z_.`*0-9 ]{0,30}") {
            let _ = UpdateMask::parse(&[raw], "update_mask");
        }
    }
}
