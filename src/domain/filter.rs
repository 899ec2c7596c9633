//! ListUsers filters: the AIP-160 subset the service supports, parsed into conditions the store turns into SQL.

use std::fmt;

use crate::domain::user::{State, User};

pub const MAX_FILTER_CHARS: usize = 2048;
pub const MAX_CONDITIONS: usize = 20;

const FILTERABLE_FIELDS: &str = "email, username, state, region_code, labels.<key>, roles";
const LABEL_FIELD_PREFIX: &str = "labels.";
const MAX_LABEL_KEY_CHARS: usize = 63;
const MAX_ROLE_CHARS: usize = 64;

/// A parsed filter: every condition must hold (they are ANDed); no conditions matches every user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Email,
    Username,
}

impl TextField {
    fn name(self) -> &'static str {
        match self {
            TextField::Email => "email",
            TextField::Username => "username",
        }
    }
}

/// How a text field is compared. Values are already lower-cased: email and username matching is case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Text {
        field: TextField,
        pattern: TextPattern,
        negated: bool,
    },
    /// `username:*` (username set) and its negation; email is always set so `email:*` is simply match-all: no
    /// condition is returned for it.
    UsernamePresent {
        negated: bool,
    },
    State {
        state: State,
        negated: bool,
    },
    /// The code is upper-cased.
    RegionCode {
        code: String,
        negated: bool,
    },
    LabelEquals {
        key: String,
        value: String,
        negated: bool,
    },
    LabelPresent {
        key: String,
        negated: bool,
    },
    HasRole {
        role: String,
        negated: bool,
    },
}

impl TextPattern {
    /// Whether `value` (already lower-cased) matches, as the store's `LIKE` with escaped wildcards does.
    fn matches(&self, value: &str) -> bool {
        match self {
            TextPattern::Exact(v) => value == v,
            TextPattern::Prefix(v) => value.starts_with(v.as_str()),
            TextPattern::Suffix(v) => value.ends_with(v.as_str()),
            TextPattern::Contains(v) => value.contains(v.as_str()),
        }
    }
}

impl Filter {
    /// Whether `user` passes every condition, evaluated in memory exactly as the store's SQL does for ListUsers
    /// (the change feed applies the filter to each user as a change left it). A user without a username fails
    /// every username pattern and passes every negated one, as SQL's `username IS NULL` branch does.
    pub fn matches(&self, user: &User) -> bool {
        self.conditions.iter().all(|condition| match condition {
            Condition::Text {
                field,
                pattern,
                negated,
            } => {
                let hit = match field {
                    TextField::Email => pattern.matches(&user.fields.email.to_lowercase()),
                    TextField::Username => {
                        !user.fields.username.is_empty() && pattern.matches(&user.fields.username.to_lowercase())
                    }
                };
                hit != *negated
            }
            Condition::UsernamePresent { negated } => user.fields.username.is_empty() == *negated,
            Condition::State { state, negated } => (user.state() == *state) != *negated,
            Condition::RegionCode { code, negated } => (user.fields.region_code == *code) != *negated,
            Condition::LabelEquals { key, value, negated } => (user.fields.labels.get(key) == Some(value)) != *negated,
            Condition::LabelPresent { key, negated } => user.fields.labels.contains_key(key) != *negated,
            Condition::HasRole { role, negated } => user.fields.roles.contains(role) != *negated,
        })
    }
}

/// Why a filter was rejected; the message names the problem and its character offset so it can go to the caller
/// as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub message: String,
}

impl FilterError {
    fn new(message: impl Into<String>) -> Self {
        FilterError {
            message: message.into(),
        }
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilterError {}

/// Parses a ListUsers `filter`. Offsets in error messages count characters, not bytes, because that is what a
/// caller sees in the string they sent.
pub fn parse(filter: &str) -> Result<Filter, FilterError> {
    let char_count = filter.chars().count();
    if char_count > MAX_FILTER_CHARS {
        return Err(FilterError::new(format!(
            "filter is {char_count} characters long; at most {MAX_FILTER_CHARS} are allowed"
        )));
    }
    Parser {
        chars: filter.chars().collect(),
        pos: 0,
    }
    .parse_filter()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    Has,
}

impl Operator {
    fn symbol(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::NotEquals => "!=",
            Operator::Has => ":",
        }
    }

    fn is_negated(self) -> bool {
        self == Operator::NotEquals
    }
}

/// What a restriction's field names, resolved before its value is interpreted.
#[derive(Debug)]
enum FieldTarget {
    Text(TextField),
    State,
    RegionCode,
    /// The bare `labels` map, only usable as `labels:<key>`.
    Labels,
    Label(String),
    Roles,
}

/// A restriction's value after unquoting, with the offset where it starts for error messages.
#[derive(Debug)]
struct Value {
    text: String,
    offset: usize,
}

impl Value {
    /// `*` as the whole value tests presence. A quoted `"*"` counts too, as AIP-160 wildcards live in strings.
    fn is_wildcard(&self) -> bool {
        self.text == "*"
    }
}

/// Walks the filter as a vector of chars so that positions are character offsets and slicing can never land
/// inside a multi-byte character.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_next(&self) -> Option<char> {
        self.chars.get(self.pos + 1).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn parse_filter(mut self) -> Result<Filter, FilterError> {
        let mut conditions = Vec::new();
        let mut restriction_count = 0usize;
        // Offset of an `AND` still waiting for the restriction on its right.
        let mut pending_and: Option<usize> = None;
        loop {
            self.skip_whitespace();
            let Some(first) = self.peek() else { break };
            let start = self.pos;
            match first {
                '(' | ')' => return Err(parentheses_error(start)),
                '-' => {
                    return Err(FilterError::new(format!(
                        "negation with `-` at offset {start} is not supported; use `!=` to negate a restriction"
                    )));
                }
                '"' => {
                    return Err(FilterError::new(format!(
                        "quoted value at offset {start} has no field; a restriction is `field OP value` \
                         (bare search terms are not supported)"
                    )));
                }
                _ => {}
            }

            let field = self.read_field()?;
            if field.is_empty() {
                return Err(FilterError::new(format!(
                    "expected a field name at offset {start}, found `{first}`; filterable fields: {FILTERABLE_FIELDS}"
                )));
            }
            if !self.peek().is_some_and(is_operator_start) {
                match field.as_str() {
                    "AND" => {
                        if restriction_count == 0 || pending_and.is_some() {
                            return Err(FilterError::new(format!(
                                "`AND` at offset {start} must stand between two restrictions"
                            )));
                        }
                        pending_and = Some(start);
                        continue;
                    }
                    "OR" => {
                        return Err(FilterError::new(format!(
                            "`OR` at offset {start} is not supported; restrictions can only be combined with AND"
                        )));
                    }
                    "NOT" => {
                        return Err(FilterError::new(format!(
                            "`NOT` at offset {start} is not supported; use `!=` to negate a restriction"
                        )));
                    }
                    _ => {}
                }
            }

            restriction_count += 1;
            if restriction_count > MAX_CONDITIONS {
                return Err(FilterError::new(format!(
                    "too many restrictions: at most {MAX_CONDITIONS} are allowed (restriction {restriction_count} \
                     starts at offset {start})"
                )));
            }
            pending_and = None;

            self.skip_whitespace();
            let operator_offset = self.pos;
            let operator = self.read_operator(&field, start)?;
            let target = resolve_field(&field, start)?;
            let value = self.read_value(operator, operator_offset)?;
            self.expect_separator()?;
            if let Some(condition) = build_condition(target, operator, value)? {
                conditions.push(condition);
            }
        }
        if let Some(offset) = pending_and {
            return Err(FilterError::new(format!(
                "`AND` at offset {offset} has no restriction after it"
            )));
        }
        Ok(Filter { conditions })
    }

    /// Reads a field path up to whitespace or an operator. Backtick-quoted parts are taken verbatim so that
    /// ``labels.`my-key` `` works; whether the result names a field is decided by `resolve_field`.
    fn read_field(&mut self) -> Result<String, FilterError> {
        let mut field = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || is_field_delimiter(c) {
                break;
            }
            field.push(c);
            self.pos += 1;
            if c == '`' {
                let open = self.pos - 1;
                loop {
                    match self.peek() {
                        None => {
                            return Err(FilterError::new(format!(
                                "unterminated backtick-quoted name starting at offset {open}"
                            )));
                        }
                        Some(inner) => {
                            field.push(inner);
                            self.pos += 1;
                            if inner == '`' {
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(field)
    }

    fn read_operator(&mut self, field: &str, field_offset: usize) -> Result<Operator, FilterError> {
        let offset = self.pos;
        let operator = match (self.peek(), self.peek_next()) {
            (Some('='), _) => Operator::Equals,
            (Some('!'), Some('=')) => Operator::NotEquals,
            (Some(':'), _) => Operator::Has,
            (Some(comparison @ ('<' | '>')), next) => {
                let symbol = if next == Some('=') {
                    format!("{comparison}=")
                } else {
                    comparison.to_string()
                };
                return Err(FilterError::new(format!(
                    "comparison operator `{symbol}` at offset {offset} is not supported; use `=`, `!=` or `:`"
                )));
            }
            (Some('!'), _) => {
                return Err(FilterError::new(format!(
                    "unexpected `!` at offset {offset}; the not-equal operator is `!=`"
                )));
            }
            (Some('(' | ')'), _) => return Err(parentheses_error(offset)),
            _ if ["and", "or", "not"].contains(&field.to_ascii_lowercase().as_str()) => {
                // Lower-case keywords read as field names; say what was probably meant.
                return Err(FilterError::new(format!(
                    "`{field}` at offset {field_offset} is not a field; logical operators are upper case and \
                     only AND is supported"
                )));
            }
            _ => {
                return Err(FilterError::new(format!(
                    "expected `=`, `!=` or `:` after `{field}` at offset {offset}; a restriction is \
                     `field OP value` (bare search terms are not supported)"
                )));
            }
        };
        self.pos += operator.symbol().chars().count();
        Ok(operator)
    }

    fn read_value(&mut self, operator: Operator, operator_offset: usize) -> Result<Value, FilterError> {
        self.skip_whitespace();
        let offset = self.pos;
        match self.peek() {
            None => Err(FilterError::new(format!(
                "missing value after `{}` at offset {operator_offset}",
                operator.symbol()
            ))),
            Some('"') => self.read_quoted(),
            Some('(' | ')') => Err(parentheses_error(offset)),
            // A value starting like an operator is almost always a typo such as `==` or `=<`; a value that really
            // starts with one of these can be quoted.
            Some(c @ ('=' | '<' | '>')) => Err(FilterError::new(format!(
                "unexpected `{c}` at offset {offset} after `{}`; the operators are `=`, `!=` and `:` \
                 (quote the value if it starts with `{c}`)",
                operator.symbol()
            ))),
            Some(_) => {
                let mut text = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace() || matches!(c, '"' | '(' | ')') {
                        break;
                    }
                    text.push(c);
                    self.pos += 1;
                }
                Ok(Value { text, offset })
            }
        }
    }

    /// Reads a double-quoted string; a backslash escapes the next character, whatever it is.
    fn read_quoted(&mut self) -> Result<Value, FilterError> {
        let offset = self.pos;
        let unterminated = || FilterError::new(format!("unterminated quoted string starting at offset {offset}"));
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(unterminated()),
                Some('"') => {
                    self.pos += 1;
                    return Ok(Value { text, offset });
                }
                Some('\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(unterminated)?;
                    text.push(escaped);
                    self.pos += 1;
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Requires whitespace or the end after a value, so that `a="x"b` or `a=b"c"` is reported rather than
    /// silently read as two restrictions.
    fn expect_separator(&self) -> Result<(), FilterError> {
        match self.peek() {
            None => Ok(()),
            Some(c) if c.is_whitespace() => Ok(()),
            Some('(' | ')') => Err(parentheses_error(self.pos)),
            Some(c) => Err(FilterError::new(format!(
                "unexpected `{c}` at offset {} after a value; separate restrictions with whitespace",
                self.pos
            ))),
        }
    }
}

fn is_operator_start(c: char) -> bool {
    matches!(c, '=' | '!' | ':' | '<' | '>')
}

fn is_field_delimiter(c: char) -> bool {
    is_operator_start(c) || matches!(c, '"' | '(' | ')')
}

fn parentheses_error(offset: usize) -> FilterError {
    FilterError::new(format!(
        "parentheses at offset {offset} are not supported; restrictions can only be combined with AND"
    ))
}

fn resolve_field(field: &str, offset: usize) -> Result<FieldTarget, FilterError> {
    match field {
        "email" => Ok(FieldTarget::Text(TextField::Email)),
        "username" => Ok(FieldTarget::Text(TextField::Username)),
        "state" => Ok(FieldTarget::State),
        "region_code" => Ok(FieldTarget::RegionCode),
        "labels" => Ok(FieldTarget::Labels),
        "roles" => Ok(FieldTarget::Roles),
        _ => match field.strip_prefix(LABEL_FIELD_PREFIX) {
            Some(key) => Ok(FieldTarget::Label(parse_label_key(
                key,
                offset + LABEL_FIELD_PREFIX.len(),
            )?)),
            None => Err(FilterError::new(format!(
                "unknown field `{field}` at offset {offset}; filterable fields: {FILTERABLE_FIELDS}"
            ))),
        },
    }
}

/// Validates a label key, bare or backtick-quoted (AIP-160 quotes map keys that are not identifiers that way).
fn parse_label_key(raw: &str, offset: usize) -> Result<String, FilterError> {
    let key = raw
        .strip_prefix('`')
        .and_then(|rest| rest.strip_suffix('`'))
        .unwrap_or(raw);
    let length = key.chars().count();
    let valid = (1..=MAX_LABEL_KEY_CHARS).contains(&length)
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(FilterError::new(format!(
            "invalid label key `{raw}` at offset {offset}; a key is 1 to {MAX_LABEL_KEY_CHARS} characters of \
             a-z, 0-9, `_` and `-`"
        )))
    }
}

fn build_condition(target: FieldTarget, operator: Operator, value: Value) -> Result<Option<Condition>, FilterError> {
    let negated = operator.is_negated();
    let offset = value.offset;
    match target {
        FieldTarget::Text(field) => text_condition(field, operator, value),
        FieldTarget::State => match State::from_name(&value.text) {
            Some(state) => Ok(Some(Condition::State { state, negated })),
            None => Err(FilterError::new(format!(
                "invalid state `{}` at offset {offset}; allowed values: {}, {}, {}",
                value.text,
                State::Active.name(),
                State::Disabled.name(),
                State::Deleted.name()
            ))),
        },
        FieldTarget::RegionCode => {
            let is_two_letters = value.text.chars().count() == 2 && value.text.chars().all(|c| c.is_ascii_alphabetic());
            if is_two_letters {
                Ok(Some(Condition::RegionCode {
                    code: value.text.to_ascii_uppercase(),
                    negated,
                }))
            } else {
                Err(FilterError::new(format!(
                    "invalid region_code `{}` at offset {offset}; expected a two-letter region code such as US",
                    value.text
                )))
            }
        }
        FieldTarget::Labels => {
            if operator != Operator::Has {
                return Err(FilterError::new(format!(
                    "`labels {}` at offset {offset} is not supported; use `labels:<key>` to test for a key or \
                     `labels.<key> = <value>` to compare a value",
                    operator.symbol()
                )));
            }
            let key = parse_label_key(&value.text, offset)?;
            Ok(Some(Condition::LabelPresent { key, negated: false }))
        }
        FieldTarget::Label(key) => {
            if value.is_wildcard() {
                return Ok(Some(Condition::LabelPresent { key, negated }));
            }
            if value.text.contains('*') {
                return Err(FilterError::new(format!(
                    "wildcard in the label value at offset {offset} is not supported; `*` alone tests whether \
                     the label is set"
                )));
            }
            Ok(Some(Condition::LabelEquals {
                key,
                value: value.text,
                negated,
            }))
        }
        FieldTarget::Roles => {
            let length = value.text.chars().count();
            let valid = (1..=MAX_ROLE_CHARS).contains(&length)
                && value
                    .text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '-'));
            if valid {
                Ok(Some(Condition::HasRole {
                    role: value.text,
                    negated,
                }))
            } else {
                Err(FilterError::new(format!(
                    "invalid role `{}` at offset {offset}; a role is 1 to {MAX_ROLE_CHARS} characters of a-z, \
                     0-9, `_`, `.`, `:` and `-`",
                    value.text
                )))
            }
        }
    }
}

fn text_condition(field: TextField, operator: Operator, value: Value) -> Result<Option<Condition>, FilterError> {
    let name = field.name();
    let offset = value.offset;
    let negated = operator.is_negated();
    if value.is_wildcard() {
        return match (field, negated) {
            // Every user has an email, so testing for one filters nothing out.
            (TextField::Email, false) => Ok(None),
            (TextField::Email, true) => Err(FilterError::new(format!(
                "`email != *` at offset {offset} matches no user: every user has an email"
            ))),
            (TextField::Username, _) => Ok(Some(Condition::UsernamePresent { negated })),
        };
    }

    let lowered = value.text.to_lowercase();
    let pattern = if operator == Operator::Has {
        if lowered.contains('*') {
            return Err(FilterError::new(format!(
                "wildcard in the `{name}:` value at offset {offset}; `:` already matches substrings (use `=` \
                 with a leading or trailing `*` for suffix or prefix matches)"
            )));
        }
        TextPattern::Contains(lowered)
    } else {
        let leading = lowered.starts_with('*');
        let trailing = lowered.ends_with('*');
        let core = lowered.trim_matches('*');
        if core.contains('*') {
            return Err(FilterError::new(format!(
                "`*` inside the `{name}` value at offset {offset}; wildcards are only allowed at the start or \
                 end of the value"
            )));
        }
        let core = core.to_string();
        match (leading, trailing) {
            (false, false) => TextPattern::Exact(core),
            (false, true) => TextPattern::Prefix(core),
            (true, false) => TextPattern::Suffix(core),
            (true, true) => TextPattern::Contains(core),
        }
    };
    let is_empty = match &pattern {
        TextPattern::Exact(s) | TextPattern::Prefix(s) | TextPattern::Suffix(s) | TextPattern::Contains(s) => {
            s.is_empty()
        }
    };
    if is_empty {
        let hint = match field {
            TextField::Username => "; use `username:*` or `username != *` to test whether a username is set",
            TextField::Email => "",
        };
        return Err(FilterError::new(format!(
            "empty `{name}` value at offset {offset}{hint}"
        )));
    }
    Ok(Some(Condition::Text {
        field,
        pattern,
        negated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(filter: &str) -> Vec<Condition> {
        match parse(filter) {
            Ok(parsed) => parsed.conditions,
            Err(e) => panic!("filter {filter:?} was rejected: {e}"),
        }
    }

    fn one(filter: &str) -> Condition {
        let mut parsed = conditions(filter);
        assert_eq!(parsed.len(), 1, "filter {filter:?} gave {parsed:?}");
        parsed.remove(0)
    }

    fn error(filter: &str) -> String {
        match parse(filter) {
            Ok(parsed) => panic!("filter {filter:?} was accepted as {parsed:?}"),
            Err(e) => e.message,
        }
    }

    fn assert_error(filter: &str, fragments: &[&str]) {
        let message = error(filter);
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "error for {filter:?} is {message:?}, expected it to contain {fragment:?}"
            );
        }
    }

    fn text(field: TextField, pattern: TextPattern, negated: bool) -> Condition {
        Condition::Text {
            field,
            pattern,
            negated,
        }
    }

    fn s(value: &str) -> String {
        value.to_string()
    }

    #[test]
    fn empty_and_blank_filters_match_everything() {
        assert_eq!(conditions(""), vec![]);
        assert_eq!(conditions("   \t\n "), vec![]);
    }

    #[test]
    fn email_operators_and_wildcards() {
        use TextField::Email;
        use TextPattern::*;
        assert_eq!(
            one("email = \"Ann@Example.com\""),
            text(Email, Exact(s("ann@example.com")), false)
        );
        assert_eq!(
            one("email=ann@example.com"),
            text(Email, Exact(s("ann@example.com")), false)
        );
        assert_eq!(
            one("email != ann@example.com"),
            text(Email, Exact(s("ann@example.com")), true)
        );
        assert_eq!(
            one("email = \"*@Example.com\""),
            text(Email, Suffix(s("@example.com")), false)
        );
        assert_eq!(one("email=ann*"), text(Email, Prefix(s("ann")), false));
        assert_eq!(one("email=\"*nn*\""), text(Email, Contains(s("nn")), false));
        assert_eq!(one("email!=*nn"), text(Email, Suffix(s("nn")), true));
        assert_eq!(one("email:Example"), text(Email, Contains(s("example")), false));
        assert_eq!(conditions("email:*"), vec![]);
        assert_eq!(conditions("email = *"), vec![]);
    }

    #[test]
    fn username_operators_and_presence() {
        use TextField::Username;
        use TextPattern::*;
        assert_eq!(one("username=Ann"), text(Username, Exact(s("ann")), false));
        assert_eq!(one("username != \"ann*\""), text(Username, Prefix(s("ann")), true));
        assert_eq!(one("username:NN"), text(Username, Contains(s("nn")), false));
        assert_eq!(one("username:*"), Condition::UsernamePresent { negated: false });
        assert_eq!(one("username = \"*\""), Condition::UsernamePresent { negated: false });
        assert_eq!(one("username != *"), Condition::UsernamePresent { negated: true });
    }

    #[test]
    fn text_value_errors() {
        assert_error("email=a*b", &["`*` inside", "offset 6"]);
        assert_error("email:*@x", &["`:` already matches substrings", "offset 6"]);
        assert_error("email=\"\"", &["empty `email` value", "offset 6"]);
        assert_error("username=**", &["empty `username` value", "username:*"]);
        assert_error("email != *", &["matches no user"]);
    }

    #[test]
    fn state_values() {
        assert_eq!(
            one("state = ACTIVE"),
            Condition::State {
                state: State::Active,
                negated: false
            }
        );
        assert_eq!(
            one("state!=DELETED"),
            Condition::State {
                state: State::Deleted,
                negated: true
            }
        );
        assert_eq!(
            one("state:DISABLED"),
            Condition::State {
                state: State::Disabled,
                negated: false
            }
        );
        assert_eq!(
            one("state=\"ACTIVE\""),
            Condition::State {
                state: State::Active,
                negated: false
            }
        );
        assert_error(
            "state=active",
            &["invalid state `active` at offset 6", "ACTIVE, DISABLED, DELETED"],
        );
        assert_error("state=STATE_UNSPECIFIED", &["invalid state `STATE_UNSPECIFIED`"]);
    }

    #[test]
    fn region_code_values() {
        assert_eq!(
            one("region_code=us"),
            Condition::RegionCode {
                code: s("US"),
                negated: false
            }
        );
        assert_eq!(
            one("region_code != \"De\""),
            Condition::RegionCode {
                code: s("DE"),
                negated: true
            }
        );
        assert_eq!(
            one("region_code:fr"),
            Condition::RegionCode {
                code: s("FR"),
                negated: false
            }
        );
        assert_error("region_code=USA", &["invalid region_code `USA` at offset 12"]);
        assert_error("region_code=U1", &["invalid region_code"]);
        assert_error("region_code=éé", &["invalid region_code"]);
    }

    #[test]
    fn label_forms() {
        assert_eq!(
            one("labels.team = core"),
            Condition::LabelEquals {
                key: s("team"),
                value: s("core"),
                negated: false
            }
        );
        assert_eq!(
            one("labels.team!=\"Core Team\""),
            Condition::LabelEquals {
                key: s("team"),
                value: s("Core Team"),
                negated: true
            }
        );
        assert_eq!(
            one("labels.team:core"),
            Condition::LabelEquals {
                key: s("team"),
                value: s("core"),
                negated: false
            }
        );
        assert_eq!(
            one("labels.team:*"),
            Condition::LabelPresent {
                key: s("team"),
                negated: false
            }
        );
        assert_eq!(
            one("labels.team != *"),
            Condition::LabelPresent {
                key: s("team"),
                negated: true
            }
        );
        assert_eq!(
            one("labels:team"),
            Condition::LabelPresent {
                key: s("team"),
                negated: false
            }
        );
        assert_eq!(
            one("labels.`my-key`=v"),
            Condition::LabelEquals {
                key: s("my-key"),
                value: s("v"),
                negated: false
            }
        );
        assert_eq!(
            one("labels:`my_key-2`"),
            Condition::LabelPresent {
                key: s("my_key-2"),
                negated: false
            }
        );
        assert_eq!(
            one("labels.k=\"\""),
            Condition::LabelEquals {
                key: s("k"),
                value: s(""),
                negated: false
            }
        );
    }

    #[test]
    fn label_errors() {
        assert_error("labels.Team=x", &["invalid label key `Team` at offset 7"]);
        assert_error("labels.=x", &["invalid label key `` at offset 7"]);
        assert_error("labels.a.b=x", &["invalid label key `a.b`"]);
        assert_error(&format!("labels.{}=x", "k".repeat(64)), &["invalid label key"]);
        assert_eq!(conditions(&format!("labels.{}=x", "k".repeat(63))).len(), 1);
        assert_error("labels.`my key`=x", &["invalid label key ``my key``"]);
        assert_error("labels.`oops=x", &["unterminated backtick", "offset 7"]);
        assert_error("labels = team", &["`labels =` at offset 9 is not supported"]);
        assert_error("labels != team", &["`labels !=`"]);
        assert_error("labels:Team", &["invalid label key `Team` at offset 7"]);
        assert_error("labels.k=ab*", &["wildcard in the label value"]);
    }

    #[test]
    fn roles() {
        assert_eq!(
            one("roles:admin"),
            Condition::HasRole {
                role: s("admin"),
                negated: false
            }
        );
        assert_eq!(
            one("roles:org:admin"),
            Condition::HasRole {
                role: s("org:admin"),
                negated: false
            }
        );
        assert_eq!(
            one("roles = \"org.viewer\""),
            Condition::HasRole {
                role: s("org.viewer"),
                negated: false
            }
        );
        assert_eq!(
            one("roles!=org:admin"),
            Condition::HasRole {
                role: s("org:admin"),
                negated: true
            }
        );
        assert_error("roles:Admin", &["invalid role `Admin` at offset 6"]);
        assert_error("roles:*", &["invalid role `*`"]);
        assert_error(&format!("roles:{}", "r".repeat(65)), &["invalid role"]);
    }

    #[test]
    fn quoting_and_escapes() {
        assert_eq!(
            one(r#"labels.k = "say \"hi\" \\ \x""#),
            Condition::LabelEquals {
                key: s("k"),
                value: s(r#"say "hi" \ x"#),
                negated: false
            }
        );
        assert_eq!(
            one("labels.k=\"a (b) AND c\""),
            Condition::LabelEquals {
                key: s("k"),
                value: s("a (b) AND c"),
                negated: false
            }
        );
        assert_error("email=\"ann", &["unterminated quoted string starting at offset 6"]);
        assert_error("email=\"ann\\\"", &["unterminated quoted string"]);
        assert_error("email=\"ann\\", &["unterminated quoted string"]);
        assert_error("email=\"a\"b", &["unexpected `b` at offset 9"]);
        assert_error("email=a\"b\"", &["unexpected `\"` at offset 7"]);
    }

    #[test]
    fn explicit_and_implicit_and() {
        let expected = vec![
            Condition::State {
                state: State::Active,
                negated: false,
            },
            Condition::HasRole {
                role: s("admin"),
                negated: false,
            },
            Condition::RegionCode {
                code: s("US"),
                negated: false,
            },
        ];
        assert_eq!(conditions("state=ACTIVE AND roles:admin AND region_code=us"), expected);
        assert_eq!(conditions("state=ACTIVE roles:admin region_code=us"), expected);
        assert_eq!(
            conditions("  state = ACTIVE\tAND roles : admin\nregion_code = us  "),
            expected
        );
        // `email:*` counts as a restriction but adds no condition.
        assert_eq!(conditions("email:* AND state=ACTIVE").len(), 1);
        // A keyword is a fine value.
        assert_eq!(
            one("labels.op=AND"),
            Condition::LabelEquals {
                key: s("op"),
                value: s("AND"),
                negated: false
            }
        );
    }

    #[test]
    fn and_placement_errors() {
        assert_error(
            "AND state=ACTIVE",
            &["`AND` at offset 0 must stand between two restrictions"],
        );
        assert_error("state=ACTIVE AND AND roles:a", &["`AND` at offset 17"]);
        assert_error("state=ACTIVE AND", &["`AND` at offset 13 has no restriction after it"]);
    }

    #[test]
    fn unsupported_syntax_is_rejected() {
        assert_error(
            "state=ACTIVE OR state=DISABLED",
            &["`OR` at offset 13 is not supported"],
        );
        assert_error("NOT state=ACTIVE", &["`NOT` at offset 0 is not supported", "!="]);
        assert_error("-state=ACTIVE", &["negation with `-` at offset 0 is not supported"]);
        assert_error("(state=ACTIVE)", &["parentheses at offset 0 are not supported"]);
        assert_error("state=ACTIVE AND (roles:a)", &["parentheses at offset 17"]);
        assert_error("state=(ACTIVE)", &["parentheses at offset 6"]);
        assert_error("state=ACTIVE)", &["parentheses at offset 12"]);
        assert_error("state=ACTIVE AND(roles:a)", &["parentheses at offset 16"]);
        assert_error("email<a", &["comparison operator `<` at offset 5 is not supported"]);
        assert_error("email >= a", &["comparison operator `>=` at offset 6"]);
        assert_error("email <= a", &["comparison operator `<=`"]);
        assert_error("email > a", &["comparison operator `>`"]);
        assert_error("email == a", &["unexpected `=` at offset 7"]);
        assert_error("email ! a", &["unexpected `!` at offset 6", "`!=`"]);
        assert_error(
            "state=ACTIVE or roles:a",
            &["`or` at offset 13 is not a field", "upper case"],
        );
    }

    #[test]
    fn malformed_restrictions() {
        assert_error(
            "foo = 1",
            &[
                "unknown field `foo` at offset 0; filterable fields: email, username, state, region_code, labels.<key>, roles",
            ],
        );
        assert_error("state=ACTIVE Email=x", &["unknown field `Email` at offset 13"]);
        assert_error("ann", &["expected `=`, `!=` or `:` after `ann` at offset 3"]);
        assert_error("\"ann\"", &["quoted value at offset 0 has no field"]);
        assert_error("=ann", &["expected a field name at offset 0"]);
        assert_error("email=", &["missing value after `=` at offset 5"]);
        assert_error("email !=   ", &["missing value after `!=` at offset 6"]);
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        assert_error("labels.k=é foo=1", &["unknown field `foo` at offset 11"]);
        assert_error("labels.k=\"日本\" 🦀=1", &["unknown field `🦀` at offset 14"]);
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("labels.k={}", "é".repeat(MAX_FILTER_CHARS - 9));
        assert_eq!(at_limit.chars().count(), MAX_FILTER_CHARS);
        assert_eq!(conditions(&at_limit).len(), 1);
        let over_limit = format!("{at_limit}é");
        assert_error(&over_limit, &["2049 characters long", "at most 2048"]);
    }

    #[test]
    fn restriction_limit() {
        let at_limit = vec!["roles:a"; MAX_CONDITIONS].join(" AND ");
        assert_eq!(conditions(&at_limit).len(), MAX_CONDITIONS);
        let over_limit = vec!["email:*"; MAX_CONDITIONS + 1].join(" ");
        assert_error(&over_limit, &["too many restrictions", "at most 20"]);
    }

    #[test]
    fn error_display_is_the_message() {
        let err = FilterError::new("boom");
        assert_eq!(err.to_string(), "boom");
    }

    /// Deterministic fuzzing: random concatenations of meaningful fragments, quote and escape characters, and
    /// multi-byte characters must never make `parse` panic, and whatever it accepts must respect the limits.
    #[test]
    fn never_panics_on_generated_input() {
        const FRAGMENTS: &[&str] = &[
            "email",
            "username",
            "state",
            "region_code",
            "labels",
            "labels.",
            "roles",
            "AND",
            "OR",
            "NOT",
            "and",
            "ACTIVE",
            "us",
            "k",
            "x",
            "=",
            "!=",
            "!",
            ":",
            "<",
            ">=",
            "\"",
            "\\",
            "(",
            ")",
            "*",
            "`",
            " ",
            " ",
            "\t",
            ".",
            "-",
            "é",
            "日本",
            "🦀",
            "İ",
            "\u{0}",
            "\u{200b}",
            "\u{3000}",
        ];
        let mut seed: u64 = 0x5eed_f11e;
        let mut next = move || {
            // Knuth's MMIX LCG; the high bits are the well-mixed ones.
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        let mut accepted = 0;
        for _ in 0..5000 {
            let fragment_count = next() % 24;
            let input: String = (0..fragment_count)
                .map(|_| FRAGMENTS[next() % FRAGMENTS.len()])
                .collect();
            match parse(&input) {
                Ok(filter) => {
                    accepted += 1;
                    assert!(filter.conditions.len() <= MAX_CONDITIONS);
                }
                Err(e) => assert!(!e.message.is_empty()),
            }
        }
        // Sanity check that the generator is not producing only garbage.
        assert!(accepted > 0);
    }
}
