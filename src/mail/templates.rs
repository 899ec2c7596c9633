//! The texts of the verification mail, in English and Spanish, as plain text and HTML.

/// A language a template exists for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    Spanish,
}

impl Language {
    /// The template language of a BCP-47 `language_code`: its primary subtag (`es`, `es-CO`, `ES_mx` →
    /// Spanish), English for anything without a template.
    pub fn of(language_code: &str) -> Language {
        let primary = language_code.split(['-', '_']).next().unwrap_or("");
        if primary.eq_ignore_ascii_case("es") {
            Language::Spanish
        } else {
            Language::English
        }
    }
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What a verification mail says: greeting name (may be empty), the code, the link (when configured), and how
/// many minutes the code is valid.
pub struct Verification<'a> {
    pub name: &'a str,
    pub code: &'a str,
    pub link: Option<&'a str>,
    pub valid_minutes: u64,
}

struct Texts {
    subject: &'static str,
    hello: &'static str,
    hello_name: &'static str,
    intro: &'static str,
    with_link: &'static str,
    validity: &'static str,
    hours: &'static str,
    minutes: &'static str,
    ignore: &'static str,
}

const ENGLISH: Texts = Texts {
    subject: "Confirm your e-mail address",
    hello: "Hello,",
    hello_name: "Hello {name},",
    intro: "To confirm that this address is yours, use this verification code:",
    with_link: "Or open this link:",
    validity: "The code is valid for {time} and can be used once.",
    hours: "hours",
    minutes: "minutes",
    ignore: "If you did not ask for this, you can ignore this message.",
};

const SPANISH: Texts = Texts {
    subject: "Confirma tu dirección de correo",
    hello: "Hola:",
    hello_name: "Hola, {name}:",
    intro: "Para confirmar que esta dirección es tuya, usa este código de verificación:",
    with_link: "O abre este enlace:",
    validity: "El código es válido durante {time} y se puede usar una sola vez.",
    hours: "horas",
    minutes: "minutos",
    ignore: "Si no lo pediste, puedes ignorar este mensaje.",
};

/// Escapes text for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the verification mail in `language`. The code stands on a line of its own in the text part, so a
/// reader (or a test) finds it whatever the transfer encoding does to long lines.
pub fn verification(language: Language, v: &Verification<'_>) -> Rendered {
    let t = match language {
        Language::English => &ENGLISH,
        Language::Spanish => &SPANISH,
    };
    // The name is the user's own text: kept out of any header but the recipient's, and escaped in HTML.
    let name: String = v.name.chars().filter(|c| !c.is_control()).collect();
    let hello = if name.trim().is_empty() {
        t.hello.to_owned()
    } else {
        t.hello_name.replace("{name}", name.trim())
    };
    // Whole hours read as hours (the default 24); anything else, such as a short test TTL, as minutes.
    let time = if v.valid_minutes >= 60 && v.valid_minutes.is_multiple_of(60) {
        format!("{} {}", v.valid_minutes / 60, t.hours)
    } else {
        format!("{} {}", v.valid_minutes.max(1), t.minutes)
    };
    let validity = t.validity.replace("{time}", &time);
    let mut text = format!("{hello}\n\n{}\n\n{}\n\n", t.intro, v.code);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><body>\n<p>{}</p>\n<p>{}</p>\n<p style=\"font-size:1.3em\"><code>{}</code></p>\n",
        escape(&hello),
        escape(t.intro),
        escape(v.code)
    );
    if let Some(link) = v.link {
        text.push_str(&format!("{}\n{link}\n\n", t.with_link));
        html.push_str(&format!(
            "<p>{} <a href=\"{}\">{}</a></p>\n",
            escape(t.with_link),
            escape(link),
            escape(link)
        ));
    }
    text.push_str(&format!("{validity}\n{}\n", t.ignore));
    html.push_str(&format!(
        "<p>{}</p>\n<p>{}</p>\n</body></html>\n",
        escape(&validity),
        escape(t.ignore)
    ));
    Rendered {
        subject: t.subject.to_owned(),
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spanish_for_es_and_its_regions_else_english() {
        assert_eq!(Language::of("es"), Language::Spanish);
        assert_eq!(Language::of("es-CO"), Language::Spanish);
        assert_eq!(Language::of("ES_mx"), Language::Spanish);
        assert_eq!(Language::of("en-US"), Language::English);
        assert_eq!(Language::of("fr"), Language::English);
        assert_eq!(Language::of(""), Language::English);
        assert_eq!(Language::of("est"), Language::English, "Estonian is not Spanish");
    }

    #[test]
    fn the_code_and_link_are_in_both_parts_and_html_is_escaped() {
        let r = verification(
            Language::Spanish,
            &Verification {
                name: "<Ana>",
                code: "abc_DEF-123",
                link: Some("https://x.test/v?c=abc_DEF-123&u=1"),
                valid_minutes: 24 * 60,
            },
        );
        assert_eq!(r.subject, "Confirma tu dirección de correo");
        assert!(r.text.contains("\nabc_DEF-123\n"));
        assert!(r.text.contains("Hola, <Ana>:"));
        assert!(r.html.contains("Hola, &lt;Ana&gt;:"), "{}", r.html);
        assert!(r.html.contains("href=\"https://x.test/v?c=abc_DEF-123&amp;u=1\""));
        assert!(r.text.contains("24 horas"));
        let plain = verification(
            Language::English,
            &Verification {
                name: "",
                code: "c0de",
                link: None,
                valid_minutes: 90,
            },
        );
        assert!(plain.text.contains("valid for 90 minutes"), "{}", plain.text);
        assert!(plain.text.starts_with("Hello,\n"));
        assert!(!plain.text.contains("link"));
    }
}
