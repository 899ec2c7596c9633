//! `google.api.http` path templates: parsing, matching a request path, and printing for OpenAPI.
//!
//! Grammar (from `google/api/http.proto`):
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: any number of segments, at the end only.
    Multi,
    /// `{field.path=segments}`; a bare `{field}` is `{field=*}`.
    Variable {
        field_path: Vec<String>,
        segments: Vec<Segment>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub segments: Vec<Segment>,
    pub verb: Option<String>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A field path bound by a match, with its percent-decoded value.
pub type Bindings = Vec<(Vec<String>, String)>;

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Characters a LITERAL may hold: unreserved and sub-delims of RFC 3986 plus `@` and percent escapes.
fn is_literal(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@%".contains(c))
}

struct Parser<'a> {
    rest: &'a str,
    template: &'a str,
}

impl<'a> Parser<'a> {
    fn error(&self, what: &str) -> TemplateError {
        TemplateError(format!("path template {:?}: {what}", self.template))
    }

    fn eat(&mut self, prefix: &str) -> bool {
        if let Some(rest) = self.rest.strip_prefix(prefix) {
            self.rest = rest;
            true
        } else {
            false
        }
    }

    fn segments(&mut self, in_variable: bool) -> Result<Vec<Segment>, TemplateError> {
        let mut segments = vec![self.segment(in_variable)?];
        while self.eat("/") {
            segments.push(self.segment(in_variable)?);
        }
        Ok(segments)
    }

    fn segment(&mut self, in_variable: bool) -> Result<Segment, TemplateError> {
        if self.eat("**") {
            return Ok(Segment::Multi);
        }
        if self.eat("*") {
            return Ok(Segment::Single);
        }
        if self.eat("{") {
            if in_variable {
                return Err(self.error("variables cannot nest"));
            }
            let end = self.rest.find(['=', '}']).ok_or_else(|| self.error("unclosed `{`"))?;
            let path = &self.rest[..end];
            let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
            if !field_path.iter().all(|p| is_ident(p)) {
                return Err(self.error(&format!("`{path}` is not a field path")));
            }
            self.rest = &self.rest[end..];
            let segments = if self.eat("=") {
                self.segments(true)?
            } else {
                vec![Segment::Single]
            };
            if !self.eat("}") {
                return Err(self.error("unclosed `{`"));
            }
            return Ok(Segment::Variable { field_path, segments });
        }
        let end = self.rest.find(['/', '}', ':', '{', '*']).unwrap_or(self.rest.len());
        let literal = &self.rest[..end];
        if !is_literal(literal) {
            return Err(self.error("empty or invalid literal segment"));
        }
        self.rest = &self.rest[end..];
        Ok(Segment::Literal(literal.to_owned()))
    }
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        let mut p = Parser {
            rest: template,
            template,
        };
        if !p.eat("/") {
            return Err(p.error("must start with `/`"));
        }
        let segments = p.segments(false)?;
        let verb = if p.eat(":") {
            if !is_literal(p.rest) {
                return Err(p.error("invalid verb"));
            }
            let verb = p.rest.to_owned();
            p.rest = "";
            Some(verb)
        } else {
            None
        };
        if !p.rest.is_empty() {
            return Err(p.error(&format!("unexpected `{}`", p.rest)));
        }
        let template = PathTemplate { segments, verb };
        template.check_multi_is_last()?;
        let mut seen = Vec::new();
        for v in template.variables() {
            if seen.contains(&v) {
                return Err(TemplateError(format!("path template binds `{}` twice", v.join("."))));
            }
            seen.push(v);
        }
        Ok(template)
    }

    /// `**` swallows the rest of the path, so it may only come last.
    fn check_multi_is_last(&self) -> Result<(), TemplateError> {
        let flat = self.flat();
        if let Some(i) = flat.iter().position(|s| matches!(s, Segment::Multi))
            && i + 1 != flat.len()
        {
            return Err(TemplateError("`**` must be the last segment of a path template".into()));
        }
        Ok(())
    }

    /// Segments with variables expanded to their own segments.
    fn flat(&self) -> Vec<&Segment> {
        let mut out = Vec::new();
        for s in &self.segments {
            match s {
                Segment::Variable { segments, .. } => out.extend(segments.iter()),
                other => out.push(other),
            }
        }
        out
    }

    /// The field paths this template binds, in order.
    pub fn variables(&self) -> Vec<Vec<String>> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Variable { field_path, .. } => Some(field_path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Matches a request path (still percent-encoded, without query). Returns the variable bindings, or `None`
    /// when the path does not fit. Single-segment variables are fully percent-decoded; multi-segment ones keep
    /// `%2F` encoded, as the HttpRule spec says.
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let mut bindings = Vec::new();
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Variable { field_path, segments } => {
                    let start = i;
                    if !match_segments(segments, &parts, &mut i) {
                        return None;
                    }
                    let raw = &parts[start..i];
                    let value = if raw.len() == 1 && !segments.iter().any(|s| matches!(s, Segment::Multi)) {
                        percent_decode(raw[0], false)?
                    } else {
                        percent_decode(&raw.join("/"), true)?
                    };
                    bindings.push((field_path.clone(), value));
                }
                other => {
                    if !match_segments(std::slice::from_ref(other), &parts, &mut i) {
                        return None;
                    }
                }
            }
        }
        (i == parts.len()).then_some(bindings)
    }
}

/// Advances `i` over `parts` as `segments` require; false on a mismatch.
fn match_segments(segments: &[Segment], parts: &[&str], i: &mut usize) -> bool {
    for segment in segments {
        match segment {
            Segment::Literal(lit) => match parts.get(*i) {
                Some(p) if percent_decode(p, false).as_deref() == Some(lit.as_str()) => *i += 1,
                _ => return false,
            },
            Segment::Single => match parts.get(*i) {
                Some(p) if !p.is_empty() => *i += 1,
                _ => return false,
            },
            Segment::Multi => {
                if parts[*i..].iter().any(|p| p.is_empty()) {
                    return false;
                }
                *i = parts.len();
            }
            Segment::Variable { .. } => return false,
        }
    }
    true
}

/// Decodes `%XX` escapes; with `keep_slash`, `%2F` stays encoded. `None` for malformed escapes or bytes that
/// are not UTF-8.
pub fn percent_decode(s: &str, keep_slash: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits (RFC 3986). Not `u8::from_str_radix`, which also takes a sign: `%+0` would
            // decode to a NUL byte.
            let high = hex_digit(*bytes.get(i + 1)?)?;
            let low = hex_digit(*bytes.get(i + 2)?)?;
            let value = (high << 4) | low;
            if keep_slash && value == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(value);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of one ASCII hex digit.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for PathTemplate {
    /// The template in OpenAPI form: variables as `{field.path}`, their sub-patterns dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            f.write_str("/")?;
            match s {
                Segment::Literal(l) => f.write_str(l)?,
                Segment::Single => f.write_str("*")?,
                Segment::Multi => f.write_str("**")?,
                Segment::Variable { field_path, .. } => write!(f, "{{{}}}", field_path.join("."))?,
            }
        }
        if let Some(verb) = &self.verb {
            write!(f, ":{verb}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn binding(path: &[&str], value: &str) -> (Vec<String>, String) {
        (path.iter().map(|s| (*s).to_owned()).collect(), value.to_owned())
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            t("/v1/users").segments,
            vec![Segment::Literal("v1".into()), Segment::Literal("users".into())]
        );
        let tpl = t("/v1/users/{user.id}:undelete");
        assert_eq!(tpl.verb.as_deref(), Some("undelete"));
        assert_eq!(tpl.variables(), vec![vec!["user".to_owned(), "id".to_owned()]]);
        let tpl = t("/v1/{name=projects/*/users/*}/x/**");
        assert_eq!(tpl.variables(), vec![vec!["name".to_owned()]]);
        assert_eq!(tpl.to_string(), "/v1/{name}/x/**");
        t("/v1/*/users");
        t("/v1/{path=**}");
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in [
            "v1/users",
            "/",
            "/v1//users",
            "/v1/{id",
            "/v1/{}",
            "/v1/{a.}",
            "/v1/{a={b}}",
            "/v1/**/x",
            "/v1/{a}/{a}",
            "/v1/users:",
            "/v1/us ers",
            "/v1/{1a}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn matches_and_binds() {
        assert_eq!(
            t("/v1/users/{id}").matches("/v1/users/abc"),
            Some(vec![binding(&["id"], "abc")])
        );
        assert_eq!(t("/v1/users").matches("/v1/users"), Some(vec![]));
        assert_eq!(t("/v1/users").matches("/v1/users/x"), None);
        assert_eq!(t("/v1/users/{id}").matches("/v1/users"), None);
        assert_eq!(
            t("/v1/users/{id}").matches("/v1/users/"),
            None,
            "empty segment does not bind"
        );
        assert_eq!(
            t("/v1/{name=projects/*/users/*}").matches("/v1/projects/p1/users/u%2F1"),
            Some(vec![binding(&["name"], "projects/p1/users/u%2F1")]),
            "multi-segment bindings keep %2F"
        );
        assert_eq!(
            t("/v1/{rest=**}").matches("/v1/a/b/c"),
            Some(vec![binding(&["rest"], "a/b/c")])
        );
    }

    #[test]
    fn verbs_and_colons() {
        let undelete = t("/v1/users/{id}:undelete");
        assert_eq!(
            undelete.matches("/v1/users/u1:undelete"),
            Some(vec![binding(&["id"], "u1")])
        );
        assert_eq!(undelete.matches("/v1/users/u1"), None);
        assert_eq!(undelete.matches("/v1/users/u1:disable"), None);
        let lookup = t("/v1/users:lookup");
        assert_eq!(lookup.matches("/v1/users:lookup"), Some(vec![]));
        assert_eq!(lookup.matches("/v1/users"), None);
        // Without a verb in the template, a colon is part of the segment.
        assert_eq!(
            t("/v1/users/{id}").matches("/v1/users/a:b"),
            Some(vec![binding(&["id"], "a:b")])
        );
        assert_eq!(t("/v1/users").matches("/v1/users:lookup"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            t("/v1/users/{id}").matches("/v1/users/a%20b%2Fc"),
            Some(vec![binding(&["id"], "a b/c")])
        );
        assert_eq!(t("/v1/users/{id}").matches("/v1/users/%zz"), None, "malformed escape");
        assert_eq!(t("/v1/users/{id}").matches("/v1/users/%ff"), None, "not UTF-8");
        assert_eq!(
            t("/v1/users/{id}").matches("/v1/users/%C3%B1"),
            Some(vec![binding(&["id"], "ñ")])
        );
        assert_eq!(
            t("/v1/us%65rs").matches("/v1/users"),
            None,
            "templates hold decoded literals only"
        );
        assert_eq!(
            t("/v1/users").matches("/v1/us%65rs"),
            Some(vec![]),
            "literal segments compare decoded"
        );
    }

    /// Found by the `path_template` fuzz target (minimized input `\n%+0`): `%+0` decoded to a NUL byte because
    /// the escape was parsed with `u8::from_str_radix`, which accepts a leading `+`.
    #[test]
    fn escapes_are_exactly_two_hex_digits() {
        for bad in ["%+0", "%+C", "a%+41", "%-1", "% 1", "%1", "%", "%G0", "%0G", "%\u{e9}"] {
            assert_eq!(percent_decode(bad, false), None, "{bad:?}");
            assert_eq!(percent_decode(bad, true), None, "{bad:?}");
        }
        assert_eq!(percent_decode("%41%6a%2F%2f", false).as_deref(), Some("Aj//"));
        assert_eq!(percent_decode("%41%6a%2F%2f", true).as_deref(), Some("Aj%2F%2f"));
        assert_eq!(t("/v1/users/{id}").matches("/v1/users/%+41"), None);
        assert_eq!(t("/v1/users/{rest=**}").matches("/v1/users/a/%+0"), None);
    }
}
