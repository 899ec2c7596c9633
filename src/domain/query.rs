//! The rules of the read requests: the `order_by` grammar of ListUsers and what a LookupUser may ask and finds.

use super::error::{Error, FieldViolation};
use super::user::User;
use super::validate::{MAX_EMAIL_CHARS, MAX_USERNAME_CHARS};

/// The sort of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OrderField {
    CreateTime,
    UpdateTime,
    Email,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderBy {
    pub field: OrderField,
    pub descending: bool,
}

/// Parses `order_by` (AIP-132): empty for creation order, or one field, optionally followed by `asc` or `desc`.
pub fn parse_order_by(raw: &str) -> Result<OrderBy, Error> {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let (field, descending) = match words.as_slice() {
        [] => {
            return Ok(OrderBy {
                field: OrderField::CreateTime,
                descending: false,
            });
        }
        [field] => (*field, false),
        [field, "desc"] => (*field, true),
        [field, "asc"] => (*field, false),
        _ => ("", false),
    };
    let field = match field {
        "create_time" => OrderField::CreateTime,
        "update_time" => OrderField::UpdateTime,
        "email" => OrderField::Email,
        _ => {
            return Err(Error::invalid_field(
                "order_by",
                "must be one of create_time, update_time or email, optionally followed by \" desc\"",
            ));
        }
    };
    Ok(OrderBy { field, descending })
}

/// A LookupUser: the e-mail address and username asked for, lower-cased; at least one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub email: Option<String>,
    pub username: Option<String>,
}

impl Lookup {
    /// Checks the request: one of the two is required, and neither may be longer than a stored value can be
    /// (so an oversized value is refused, not looked up).
    pub fn parse(email: &str, username: &str) -> Result<Lookup, Error> {
        if email.is_empty() && username.is_empty() {
            return Err(Error::invalid(vec![
                FieldViolation::new("email", "email or username is required"),
                FieldViolation::new("username", "email or username is required"),
            ]));
        }
        let mut violations = Vec::new();
        if email.chars().count() > MAX_EMAIL_CHARS {
            violations.push(FieldViolation::new(
                "email",
                format!("must be at most {MAX_EMAIL_CHARS} characters"),
            ));
        }
        if username.chars().count() > MAX_USERNAME_CHARS {
            violations.push(FieldViolation::new(
                "username",
                format!("must be at most {MAX_USERNAME_CHARS} characters"),
            ));
        }
        Error::check(violations)?;
        Ok(Lookup {
            email: (!email.is_empty()).then(|| email.to_lowercase()),
            username: (!username.is_empty()).then(|| username.to_lowercase()),
        })
    }

    /// The user among `candidates` (those with either value) that has every value asked for.
    pub fn pick(&self, candidates: &[User]) -> Result<User, Error> {
        candidates
            .iter()
            .find(|u| {
                self.email.as_ref().is_none_or(|e| u.fields.email.to_lowercase() == *e)
                    && self.username.as_ref().is_none_or(|n| u.fields.username == *n)
            })
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(match (&self.email, &self.username) {
                    (Some(_), Some(_)) => "no user has both that e-mail address and that username".into(),
                    (Some(_), None) => "no user has that e-mail address".into(),
                    _ => "no user has that username".into(),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::UserFields;

    #[test]
    fn order_by_grammar() {
        let parsed = |raw: &str| parse_order_by(raw).map(|o| (o.field, o.descending));
        assert_eq!(parsed(""), Ok((OrderField::CreateTime, false)));
        assert_eq!(parsed("email"), Ok((OrderField::Email, false)));
        assert_eq!(parsed("  update_time   desc "), Ok((OrderField::UpdateTime, true)));
        assert_eq!(parsed("create_time asc"), Ok((OrderField::CreateTime, false)));
        for bad in ["name", "email descending", "email desc extra", "desc", "EMAIL"] {
            match parse_order_by(bad) {
                Err(Error::InvalidArgument { violations, .. }) => assert_eq!(violations[0].field, "order_by"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn lookups_need_a_value_within_the_stored_limits() {
        let fields = |e: &Error| match e {
            Error::InvalidArgument { violations, .. } => violations.iter().map(|v| v.field.clone()).collect(),
            _ => Vec::new(),
        };
        let err = Lookup::parse("", "").expect_err("required");
        assert_eq!(fields(&err), vec!["email", "username"]);
        let err =
            Lookup::parse(&"a".repeat(MAX_EMAIL_CHARS + 1), &"b".repeat(MAX_USERNAME_CHARS + 1)).expect_err("too long");
        assert_eq!(fields(&err), vec!["email", "username"]);
        assert!(Lookup::parse(&"a".repeat(MAX_EMAIL_CHARS), "").is_ok());
        let lookup = Lookup::parse("Ann@Example.com", "ANN").expect("valid");
        assert_eq!(lookup.email.as_deref(), Some("ann@example.com"));
        assert_eq!(lookup.username.as_deref(), Some("ann"));
    }

    #[test]
    fn a_lookup_picks_the_user_with_every_value() {
        let user = |email: &str, username: &str| User {
            id: uuid::Uuid::now_v7(),
            fields: UserFields {
                email: email.into(),
                username: username.into(),
                ..Default::default()
            },
            email_verified: false,
            disabled: false,
            disabled_reason: String::new(),
            has_password: false,
            create_time: chrono::Utc::now(),
            update_time: chrono::Utc::now(),
            delete_time: None,
            purge_time: None,
            last_login_time: None,
            revision: 1,
        };
        let ann = user("Ann@example.com", "ann");
        let bea = user("bea@example.com", "bea");
        let candidates = vec![bea.clone(), ann.clone()];
        let both = Lookup::parse("ann@EXAMPLE.com", "ann").expect("valid");
        assert_eq!(both.pick(&candidates), Ok(ann));
        let mixed = Lookup::parse("ann@example.com", "bea").expect("valid");
        assert_eq!(
            mixed.pick(&candidates),
            Err(Error::NotFound(
                "no user has both that e-mail address and that username".into()
            ))
        );
        let by_name = Lookup::parse("", "bea").expect("valid");
        assert_eq!(by_name.pick(&candidates), Ok(bea));
        assert!(matches!(
            Lookup::parse("", "cy").expect("valid").pick(&candidates),
            Err(Error::NotFound(_))
        ));
    }
}
